-- The superheroes of the sample app (the Phoenix "GameApp" superheroes resource).
-- Lengths are counted in characters; the limits match store/superheroes.rs, which validates
-- first so that clients get Ecto-style messages instead of constraint errors.
-- `version` increments on every update; together with a strictly increasing `updated_at`
-- it lets subscribers apply concurrent updates last-writer-wins.
CREATE TABLE superheroes (
    id bigserial PRIMARY KEY,
    name text NOT NULL
        CONSTRAINT superheroes_name_length
        CHECK (char_length(btrim(name)) > 0 AND char_length(name) <= 100),
    location text NOT NULL
        CONSTRAINT superheroes_location_length
        CHECK (char_length(btrim(location)) > 0 AND char_length(location) <= 100),
    power text NOT NULL
        CONSTRAINT superheroes_power_length
        CHECK (char_length(btrim(power)) > 0 AND char_length(power) <= 200),
    version bigint NOT NULL DEFAULT 1 CONSTRAINT superheroes_version_positive CHECK (version >= 1),
    inserted_at timestamptz(6) NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz(6) NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT superheroes_updated_after_inserted CHECK (updated_at >= inserted_at)
);
