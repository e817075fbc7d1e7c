-- Cluster PubSub catch-up (src/cluster): every batch a node relays is kept here for a short
-- while, numbered per (origin, incarnation), so that a node whose listener was away (a
-- reconnect, a PostgreSQL restart) or that saw a gap in an origin's numbers fetches what it
-- missed, in order, instead of losing it. Batches too big for NOTIFY are only here.
-- UNLOGGED: no WAL for a log that lives a minute; after a PostgreSQL crash it is empty, and
-- receivers count what they can no longer fetch as missed.
DELETE FROM cluster_messages;
ALTER TABLE cluster_messages SET UNLOGGED;
ALTER TABLE cluster_messages
    ADD COLUMN incarnation bigint NOT NULL,
    ADD COLUMN batch bigint NOT NULL;
CREATE UNIQUE INDEX cluster_messages_origin_batch
    ON cluster_messages (origin, incarnation, batch);
