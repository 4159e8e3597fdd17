CREATE TABLE orders (id INTEGER PRIMARY KEY, email TEXT, amount NUMERIC(10, 2), qty INTEGER,
                     note TEXT, shipped_on DATE, updated_at DATETIME);
INSERT INTO orders VALUES (1, 'Ann@X.org', 2.5, 4, NULL, '2024-05-02', '2024-05-01 10:00:00');
INSERT INTO orders VALUES (2, 'bob@x.org', 10, 1, 'gift', NULL, '2024-05-01 10:05:00');
INSERT INTO orders VALUES (3, 'carol@x.org', 1.25, 2, '', '2024-05-03', '2024-05-01 10:05:00.250000');
INSERT INTO orders VALUES (4, 'dan@x.org', 3, 3, NULL, NULL, '2024-05-02 08:00:00');
