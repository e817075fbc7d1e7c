-- Cluster PubSub (src/cluster): a batch of broadcasts too big for one NOTIFY (8,000 bytes) is
-- stored here and its id notified on `phx_cluster` in the same transaction. Every node reads
-- it once; the sending node deletes rows older than five minutes.
CREATE TABLE cluster_messages (
    id bigserial PRIMARY KEY,
    origin text NOT NULL,
    body text NOT NULL,
    inserted_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX cluster_messages_inserted_at ON cluster_messages (inserted_at);
