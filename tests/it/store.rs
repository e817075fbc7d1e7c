use crate::support::pg::TestDb;
use phx_threads::store::superheroes;

#[test]
fn smoke() {
    let db = TestDb::new();
    let store = db.store();
    let heroes = superheroes::list(&mut *store.client().unwrap()).unwrap();
    assert!(heroes.is_empty());
}
