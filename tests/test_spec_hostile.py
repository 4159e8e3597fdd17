"""Hostile specs: every one ends in exit 2 with a message that says what was expected — never a
traceback, a hang (pytest's timeout) or gigabytes of memory (every case again in a child process
under a 1 GiB address-space cap)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import flownb
from flownb.cli import main
from flownb.errors import SpecError

GOOD = "flownb: 1\nname: ok\ntrigger: {name: hook, component: webhook}\nsteps:\n" \
       "  - {name: m, component: mapping, config: {fields: {a: a}}}\n"


def _bomb(levels: int = 9, width: int = 9) -> str:
    lines = ['a0: &a0 [' + ",".join(['"lol"'] * width) + ']']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n" + GOOD


CASES = {
    # name: (bytes of the file, text the error must contain)
    "alias bomb 9x9": (_bomb().encode(), "expands to more than 200,000 nodes"),
    "alias bomb hidden in a step config": (
        (_bomb().split("flownb: 1")[0] + GOOD.replace("fields: {a: a}", "fields: {a: a}, x: *a9")).encode(),
        "expands to more than"),
    "latin-1": ("flownb: 1\nname: café\n".encode("latin-1"), "is not UTF-8: byte 0xe9 at line 2"),
    "utf-16 with BOM": (GOOD.encode("utf-16"), "UTF-16"),
    "utf-16-le without BOM": (GOOD.encode("utf-16-le"), "UTF-16"),
    "random bytes": (bytes(range(128, 256)) * 4, "is not UTF-8"),
    "over the size limit": (("name: x\npad: '" + "a" * (4 * 1024 * 1024 + 10) + "'\n").encode(),
                            "over the limit of 4,194,304 bytes"),
    "nesting past the parser's depth": (("name: " + "[" * 20000 + "]" * 20000 + "\n").encode(),
                                        "invalid YAML"),
    "empty": (b"", "a flow spec is a YAML mapping"),
    "a list": (b"- a\n- b\n", "a flow spec is a YAML mapping"),
    "tabs": (b"name: x\n\tsteps: []\n", "invalid YAML at line 2"),
    "two documents": (GOOD.encode() + b"---\n" + GOOD.encode(), "invalid YAML"),
    "a python object tag": (b"!!python/object/apply:os.system ['true']\n", "invalid YAML"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_spec_is_exit_2_with_what_was_expected(tmp_path, capsys, name):
    data, expected = CASES[name]
    spec = tmp_path / "flow.yaml"
    spec.write_bytes(data)
    assert main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert "Traceback" not in err


def test_a_directory_given_as_the_spec(tmp_path, capsys):
    assert main(["validate", str(tmp_path)]) == 2
    assert "is a directory; pass the path to a flow.yaml" in capsys.readouterr().err


def test_utf8_with_bom_and_plain_aliases_still_load(tmp_path):
    spec = tmp_path / "flow.yaml"
    spec.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    assert flownb.load(spec).name == "ok"
    text = "flownb: 1\nname: ok\ntrigger: &t {name: hook, component: webhook}\nsteps:\n" \
           "  - {name: m, component: mapping, config: {fields: &f {a: a, b: b}}}\n" \
           "  - {name: n, component: mapping, config: {fields: *f}}\n"
    assert flownb.load(text).steps[1].config == {"fields": {"a": "a", "b": "b"}}


def test_the_bomb_is_refused_within_a_small_memory_cap(tmp_path):
    """In a child process limited to 1 GiB of address space: the refusal needs no expansion."""
    spec = tmp_path / "flow.yaml"
    spec.write_text(_bomb())
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30));"
            "from flownb.cli import main; sys.exit(main(['validate', sys.argv[1]]))")
    out = subprocess.run([sys.executable, "-c", code, str(spec)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "expands to more than" in out.stderr


def test_every_hostile_spec_is_refused_within_a_small_memory_cap(tmp_path):
    """What each refusal costs, as an outcome: all cases in one child limited to 1 GiB of address
    space (where an expanded bomb or a copied 4 MiB string many times over would not fit), each exit 2."""
    files = []
    for i, name in enumerate(CASES):
        spec = tmp_path / f"flow{i}.yaml"
        spec.write_bytes(CASES[name][0])
        files.append(str(spec))
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30));"
            "from flownb.cli import main; print([main(['validate', f]) for f in sys.argv[1:]])")
    out = subprocess.run([sys.executable, "-c", code, *files], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == repr([2] * len(CASES)), out.stdout[-2000:]


def test_a_parameter_value_cannot_be_a_bomb():
    with pytest.raises(SpecError):
        flownb.params.coerce(_bomb().split("flownb: 1")[0] + "x: *a9\n", flownb.params.Param.of("p", {"a": 1}))
