//! The `superheroes` table: the row type, Ecto-style casting and validation, and the queries.
//!
//! Threads: runs on the caller's thread (HTTP workers, channel processes) over a connection
//! it passes in; nothing here spawns or waits beyond the connection's own timeouts.
//!
//! Every write runs in one transaction that also calls
//! `pg_notify('superheroes_changes', {"action":..,"superhero":{..}})`, so a change event is
//! delivered if and only if the write committed (Postgres sends notifications at commit and
//! drops them on rollback). The functions take `&mut impl GenericClient`: given a `Client`
//! they open a transaction, given a `Transaction` they open a savepoint inside it.
//!
//! Usage with the pool: `superheroes::list(&mut *store.client()?)`.

use chrono::{DateTime, SecondsFormat, Utc};
use postgres::{GenericClient, Row};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::store::listener::{Action, CHANNEL};
use crate::store::{Error, FieldErrors};

/// Maximum length of `name`, in characters (Unicode scalar values, as Postgres' `char_length`).
pub const NAME_MAX: usize = 100;
/// Maximum length of `location`, in characters.
pub const LOCATION_MAX: usize = 100;
/// Maximum length of `power`, in characters. With the other limits a NOTIFY payload stays
/// below ~3 KB even if every character is escaped, well under Postgres' 8000-byte limit.
pub const POWER_MAX: usize = 200;
/// Default bound on the table (`StoreConfig::max_superheroes`, `--max-superheroes`): creates
/// beyond it are refused with 422, so `list`, the lobby's `hydrate` and the REST index always
/// carry the whole table and never truncate it.
pub const MAX_ROWS: usize = 10_000;
/// Key of the advisory lock that serialises bounded creates, so that concurrent creates cannot
/// both see room for one more row.
const CREATE_LOCK: i64 = 0x7068_785f_6d61_7872; // "phx_maxr"

/// One row. Serialized with timestamps in RFC 3339 with microseconds and `Z`.
///
/// `version` starts at 1 and increments with every update. It is part of the serialized form
/// (REST and NOTIFY alike) so that clients and channels can order concurrent updates of one
/// hero without comparing timestamps; `updated_at` also strictly increases per row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Superhero {
    pub id: i64,
    pub name: String,
    pub location: String,
    pub power: String,
    pub version: i64,
    #[serde(with = "micros")]
    pub inserted_at: DateTime<Utc>,
    #[serde(with = "micros")]
    pub updated_at: DateTime<Utc>,
}

/// Fields supplied by a client. `None` means "not given": required on create, unchanged on
/// update.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SuperheroParams {
    pub name: Option<String>,
    pub location: Option<String>,
    pub power: Option<String>,
}

/// Whether absent fields are errors (create) or mean "keep" (update).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Create,
    Update,
}

/// The JSON body of a NOTIFY on `superheroes_changes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangePayload {
    pub action: Action,
    pub superhero: Superhero,
}

const COLUMNS: &str = "id, name, location, power, version, inserted_at, updated_at";

/// Casts and validates client attributes like an Ecto changeset: unknown keys are ignored,
/// non-string values are "is invalid", `null` and blank strings are "can't be blank" (for a
/// create, so is a missing key), and lengths are checked.
///
/// # Errors
/// All field errors found, as `{"field": ["message", ..]}`.
pub fn cast(attrs: &Map<String, Value>, mode: Mode) -> Result<SuperheroParams, FieldErrors> {
    let mut errors = FieldErrors::default();
    let params = SuperheroParams {
        name: cast_string(attrs, "name", &mut errors),
        location: cast_string(attrs, "location", &mut errors),
        power: cast_string(attrs, "power", &mut errors),
    };
    validate_into(&params, mode, &mut errors);
    if errors.is_empty() { Ok(params) } else { Err(errors) }
}

/// Validates already-typed params; `create` and `update` call it so that no caller can bypass
/// the rules the table's CHECK constraints also enforce.
///
/// # Errors
/// The field errors, as for `cast`.
pub fn validate(params: &SuperheroParams, mode: Mode) -> Result<(), FieldErrors> {
    let mut errors = FieldErrors::default();
    validate_into(params, mode, &mut errors);
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

/// All rows ordered by id. Not truncated: the table itself is bounded (`create_bounded`).
///
/// # Errors
/// `is_unavailable()` if the connection fails.
pub fn list(c: &mut impl GenericClient) -> Result<Vec<Superhero>, Error> {
    let sql = format!("SELECT {COLUMNS} FROM superheroes ORDER BY id");
    let rows = c.query(&sql, &[])?;
    rows.iter().map(from_row).collect()
}

/// The row with `id`.
///
/// # Errors
/// `is_not_found()` if there is none; `is_unavailable()` if the connection fails.
pub fn get(c: &mut impl GenericClient, id: i64) -> Result<Superhero, Error> {
    let sql = format!("SELECT {COLUMNS} FROM superheroes WHERE id = $1");
    let row = c.query_opt(&sql, &[&id])?.ok_or_else(Error::not_found)?;
    from_row(&row)
}

/// Inserts a row and notifies `create`, in one transaction. `inserted_at == updated_at`.
///
/// # Errors
/// `field_errors()` if `params` are invalid for a create; `is_unavailable()`.
pub fn create(c: &mut impl GenericClient, params: &SuperheroParams) -> Result<Superhero, Error> {
    validate(params, Mode::Create).map_err(Error::invalid)?;
    // One clock reading for both timestamps: two column defaults would differ by microseconds.
    let sql = format!(
        "INSERT INTO superheroes (name, location, power, inserted_at, updated_at)
         SELECT $1, $2, $3, t.now, t.now FROM (SELECT clock_timestamp() AS now) AS t
         RETURNING {COLUMNS}"
    );
    let mut tx = c.transaction()?;
    let row = tx.query_one(&sql, &[&params.name, &params.location, &params.power])?;
    let hero = from_row(&row)?;
    notify(&mut tx, Action::Create, &hero)?;
    tx.commit()?;
    Ok(hero)
}

/// `create`, refused while the table holds `max_rows` rows or more. Bounded creates take one
/// advisory lock for the count and the insert, so together they never pass the bound.
///
/// # Errors
/// `field_errors()` (`superheroes: ["limit of N reached"]`) when the table is full; as `create`.
pub fn create_bounded(
    c: &mut impl GenericClient,
    params: &SuperheroParams,
    max_rows: usize,
) -> Result<Superhero, Error> {
    validate(params, Mode::Create).map_err(Error::invalid)?;
    let mut tx = c.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CREATE_LOCK])?;
    let count: i64 = tx.query_one("SELECT count(*) FROM superheroes", &[])?.get(0);
    if count as usize >= max_rows {
        let mut errors = FieldErrors::default();
        errors.add("superheroes", format!("limit of {max_rows} reached; delete some first"));
        return Err(Error::invalid(errors));
    }
    let hero = create(&mut tx, params)?;
    tx.commit()?;
    Ok(hero)
}

/// Changes the given fields, bumps `version`, and notifies `update`, in one transaction.
///
/// `updated_at` becomes `greatest(clock_timestamp(), previous + 1 µs)`: under READ COMMITTED a
/// concurrent update of the same row waits for the row lock and then re-evaluates SET on the
/// newest row version, so `updated_at` strictly increases in commit (= notification) order.
///
/// With no fields given nothing is written and no event is sent, as Ecto does for an empty
/// changeset; the current row is returned.
///
/// # Errors
/// `is_not_found()`, `field_errors()`, `is_unavailable()`.
pub fn update(
    c: &mut impl GenericClient,
    id: i64,
    params: &SuperheroParams,
) -> Result<Superhero, Error> {
    validate(params, Mode::Update).map_err(Error::invalid)?;
    if *params == SuperheroParams::default() {
        return get(c, id);
    }
    let sql = format!(
        "UPDATE superheroes SET
           name = coalesce($2, name),
           location = coalesce($3, location),
           power = coalesce($4, power),
           version = version + 1,
           updated_at = greatest(clock_timestamp(), superheroes.updated_at + interval '1 microsecond')
         WHERE id = $1
         RETURNING {COLUMNS}"
    );
    let mut tx = c.transaction()?;
    let values: [&(dyn postgres::types::ToSql + Sync); 4] =
        [&id, &params.name, &params.location, &params.power];
    let row = tx.query_opt(&sql, &values)?.ok_or_else(Error::not_found)?;
    let hero = from_row(&row)?;
    notify(&mut tx, Action::Update, &hero)?;
    tx.commit()?;
    Ok(hero)
}

/// Deletes the row and notifies `delete` with its last state, in one transaction.
///
/// # Errors
/// `is_not_found()`, `is_unavailable()`.
pub fn delete(c: &mut impl GenericClient, id: i64) -> Result<Superhero, Error> {
    let sql = format!("DELETE FROM superheroes WHERE id = $1 RETURNING {COLUMNS}");
    let mut tx = c.transaction()?;
    let row = tx.query_opt(&sql, &[&id])?.ok_or_else(Error::not_found)?;
    let hero = from_row(&row)?;
    notify(&mut tx, Action::Delete, &hero)?;
    tx.commit()?;
    Ok(hero)
}

/// Inserts a few classic heroes if the table is empty; returns how many were inserted.
/// A transaction-scoped advisory lock keeps two starting servers from both seeding.
///
/// # Errors
/// `is_unavailable()` and database errors.
pub fn seed_if_empty(c: &mut impl GenericClient) -> Result<usize, Error> {
    const SEED_LOCK: i64 = 0x7068_785f_7365_6564; // "phx_seed"
    let mut tx = c.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SEED_LOCK])?;
    let count: i64 = tx.query_one("SELECT count(*) FROM superheroes", &[])?.get(0);
    if count > 0 {
        return Ok(0);
    }
    for (name, location, power) in SEED {
        let params = SuperheroParams {
            name: Some(name.to_string()),
            location: Some(location.to_string()),
            power: Some(power.to_string()),
        };
        create(&mut tx, &params)?;
    }
    tx.commit()?;
    Ok(SEED.len())
}

const SEED: [(&str, &str, &str); 5] = [
    ("Superman", "Metropolis", "Flight, super strength and heat vision"),
    ("Batman", "Gotham City", "Genius intellect and a utility belt"),
    ("Wonder Woman", "Themyscira", "Lasso of truth and superhuman strength"),
    ("Spider-Man", "New York City", "Wall-crawling and spider-sense"),
    ("Storm", "Kenya", "Weather control"),
];

fn notify(tx: &mut impl GenericClient, action: Action, hero: &Superhero) -> Result<(), Error> {
    let payload = ChangePayload { action, superhero: hero.clone() };
    let json = serde_json::to_string(&payload).map_err(Error::json)?;
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &json])?;
    Ok(())
}

fn from_row(row: &Row) -> Result<Superhero, Error> {
    Ok(Superhero {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        location: row.try_get("location")?,
        power: row.try_get("power")?,
        version: row.try_get("version")?,
        inserted_at: row.try_get("inserted_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Ecto's cast for a `:string` field: strings pass, `null` becomes a blank value (so that
/// "can't be blank" follows), anything else is "is invalid".
fn cast_string(
    attrs: &Map<String, Value>,
    field: &'static str,
    errors: &mut FieldErrors,
) -> Option<String> {
    match attrs.get(field)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => Some(String::new()),
        _ => {
            errors.add(field, "is invalid");
            None
        }
    }
}

fn validate_into(params: &SuperheroParams, mode: Mode, errors: &mut FieldErrors) {
    let fields = [
        ("name", &params.name, NAME_MAX),
        ("location", &params.location, LOCATION_MAX),
        ("power", &params.power, POWER_MAX),
    ];
    for (field, value, max) in fields {
        // Like Ecto's validate_required, a field that already failed casting gets no more
        // messages.
        if errors.has(field) {
            continue;
        }
        match value {
            None if mode == Mode::Create => errors.add(field, "can't be blank"),
            None => {}
            Some(value) => validate_string(field, value, max, errors),
        }
    }
}

fn validate_string(field: &'static str, value: &str, max: usize, errors: &mut FieldErrors) {
    if value.trim().is_empty() {
        errors.add(field, "can't be blank");
    } else if value.contains('\0') {
        // Postgres text cannot store NUL; rejecting it here keeps it a 422, not a 500.
        errors.add(field, "is invalid");
    } else if value.chars().count() > max {
        errors.add(field, format!("should be at most {max} character(s)"));
    }
}

/// Serde adapter: RFC 3339 with exactly six fractional digits and `Z`,
/// e.g. `2026-11-23T10:00:00.123456Z`.
pub mod micros {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_micros(t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

/// Formats a timestamp the way the API does.
pub fn format_micros(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(attrs: Value, mode: Mode, expected: Value) {
        let attrs = attrs.as_object().expect("test attrs are an object").clone();
        let actual = match cast(&attrs, mode) {
            Ok(p) => json!({"ok": [p.name, p.location, p.power]}),
            Err(errors) => serde_json::to_value(&errors).unwrap(),
        };
        assert_eq!(actual, expected);
    }

    #[test]
    fn create_requires_every_field() {
        check(
            json!({}),
            Mode::Create,
            json!({"name": ["can't be blank"], "location": ["can't be blank"], "power": ["can't be blank"]}),
        );
        check(
            json!({"name": "A", "location": "B"}),
            Mode::Create,
            json!({"power": ["can't be blank"]}),
        );
        check(
            json!({"name": "A", "location": "B", "power": "C", "x": 1}),
            Mode::Create,
            json!({"ok": ["A", "B", "C"]}),
        );
    }

    #[test]
    fn blank_null_and_whitespace_are_blank() {
        check(
            json!({"name": "", "location": null, "power": " \t\n"}),
            Mode::Create,
            json!({"name": ["can't be blank"], "location": ["can't be blank"], "power": ["can't be blank"]}),
        );
        check(json!({"name": null}), Mode::Update, json!({"name": ["can't be blank"]}));
    }

    #[test]
    fn wrong_types_are_invalid_and_get_no_other_message() {
        check(
            json!({"name": 1, "location": ["x"], "power": {"a": 1}}),
            Mode::Create,
            json!({"name": ["is invalid"], "location": ["is invalid"], "power": ["is invalid"]}),
        );
        check(json!({"name": true}), Mode::Update, json!({"name": ["is invalid"]}));
        check(json!({"name": "a\u{0}b"}), Mode::Update, json!({"name": ["is invalid"]}));
    }

    #[test]
    fn lengths_count_characters_not_bytes() {
        let ok = "é".repeat(NAME_MAX);
        check(json!({"name": ok}), Mode::Update, json!({"ok": [ok, null, null]}));
        check(
            json!({"name": "x".repeat(NAME_MAX + 1)}),
            Mode::Update,
            json!({"name": ["should be at most 100 character(s)"]}),
        );
        check(
            json!({"location": "x".repeat(LOCATION_MAX + 1)}),
            Mode::Update,
            json!({"location": ["should be at most 100 character(s)"]}),
        );
        check(
            json!({"power": "x".repeat(POWER_MAX + 1)}),
            Mode::Update,
            json!({"power": ["should be at most 200 character(s)"]}),
        );
    }

    #[test]
    fn update_accepts_partial_and_empty() {
        check(json!({}), Mode::Update, json!({"ok": [null, null, null]}));
        check(json!({"power": "Flight"}), Mode::Update, json!({"ok": [null, null, "Flight"]}));
    }

    #[test]
    fn worst_case_notify_payload_fits_in_8000_bytes() {
        let t = Utc::now();
        let hero = Superhero {
            id: i64::MAX,
            name: "\u{1}".repeat(NAME_MAX),
            location: "\u{1}".repeat(LOCATION_MAX),
            power: "\u{1}".repeat(POWER_MAX),
            version: i64::MAX,
            inserted_at: t,
            updated_at: t,
        };
        let payload = ChangePayload { action: Action::Update, superhero: hero };
        let json = serde_json::to_string(&payload).unwrap();
        assert!(json.len() < 4000, "payload is {} bytes", json.len());
    }

    #[test]
    fn timestamps_have_microseconds_and_round_trip() {
        let t = DateTime::parse_from_rfc3339("2026-11-23T10:00:00.123456Z").unwrap().to_utc();
        assert_eq!(format_micros(&t), "2026-11-23T10:00:00.123456Z");
        let whole = DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z").unwrap().to_utc();
        assert_eq!(format_micros(&whole), "2026-11-23T10:00:00.000000Z");
    }
}
