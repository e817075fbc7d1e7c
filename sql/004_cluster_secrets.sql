-- Secrets the nodes of a cluster share without an operator configuring them. 'longpoll' is the
-- key LongPoll session tokens are derived from when neither --longpoll-secret nor
-- --secret-key-base is set (auth::longpoll_key_from_shared, main.rs): every node of a cluster
-- uses this database, so every node reads the same key. 32 bytes from two gen_random_uuid()
-- (PostgreSQL 13+, drawn from pg_strong_random: 244 random bits), made once, by whichever
-- node migrates first.
CREATE TABLE cluster_secrets (
    name text PRIMARY KEY,
    secret bytea NOT NULL CHECK (length(secret) >= 32)
);

INSERT INTO cluster_secrets (name, secret)
VALUES ('longpoll', uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()));
