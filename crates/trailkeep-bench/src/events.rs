//! The request bodies every phase sends: 1000 distinct, realistic events of
//! about 600 bytes, spread over 100 tenants and 1000 tenant/actor pairs.

use serde_json::{Value, json};

/// Distinct event templates; each is its own tenant/actor pair.
pub const TEMPLATES: usize = 1000;
/// Tenants the templates are spread over (`tenant-000` … `tenant-099`).
pub const TENANTS: usize = 100;
/// Events in one batch request.
pub const BATCH: usize = 1000;

const TAGS: [&str; 2] = ["sso", "password"];
const ACTIONS: [&str; 10] = [
    "user.login",
    "user.logout",
    "user.password_change",
    "document.create",
    "document.share",
    "document.delete",
    "billing.invoice_paid",
    "settings.update",
    "api_key.create",
    "member.invite",
];
/// Action prefixes the reads phase filters by; each covers part of [`ACTIONS`].
pub const ACTION_PREFIXES: [&str; 3] = ["user.*", "document.*", "billing.*"];
const FIRST_NAMES: [&str; 20] = [
    "ann", "bela", "chidi", "dora", "emeka", "farah", "goran", "hana", "ines", "jonas", "kemal",
    "lena", "mateo", "nadia", "oskar", "priya", "quinn", "rosa", "sven", "tomoko",
];
const LAST_NAMES: [&str; 50] = [
    "abbott", "baker", "castro", "dubois", "eriksen", "fischer", "garcia", "horvat", "ivanova",
    "jensen", "kowalski", "larsen", "moreau", "novak", "okafor", "petrov", "quispe", "rossi",
    "silva", "tanaka", "ueda", "varga", "weber", "xu", "yilmaz", "zhang", "almeida", "brennan",
    "costa", "dimitrov", "eze", "ferrari", "gruber", "haddad", "iqbal", "juarez", "kim", "lopez",
    "mendes", "nakamura", "olsen", "park", "quinto", "reyes", "schmidt", "toth", "urban", "vogel",
    "wagner", "young",
];

/// The tenant of template `i`.
#[must_use]
pub fn tenant(i: usize) -> String {
    format!("tenant-{:03}", i % TENANTS)
}

/// The actor id of template `i`.
#[must_use]
pub fn actor_id(i: usize) -> String {
    format!("user-{:04}", i % TEMPLATES)
}

/// The actor's display name of template `i`: a first and last name pair
/// unique to the template, used as a full-text query.
#[must_use]
pub fn actor_name(i: usize) -> String {
    let i = i % TEMPLATES;
    format!(
        "{} {}",
        FIRST_NAMES[i % FIRST_NAMES.len()],
        LAST_NAMES[i / FIRST_NAMES.len() % LAST_NAMES.len()]
    )
}

/// Event template `i` (taken modulo [`TEMPLATES`]); `marker`, when given, is
/// appended to the description so a full-text query can find this event.
#[must_use]
pub fn event(i: usize, marker: Option<&str>) -> Value {
    let i = i % TEMPLATES;
    let action = ACTIONS[i % ACTIONS.len()];
    let actor = actor_id(i);
    let name = actor_name(i);
    let doc = format!("doc-{:05}", (i * 7919) % 100_000);
    let mut description = format!("{name} ran {action} on document {doc} from the web console");
    if let Some(m) = marker {
        description.push(' ');
        description.push_str(m);
    }
    json!({
        "tenant": tenant(i),
        "action": action,
        "actor": {
            "id": actor,
            "type": "user",
            "name": name,
            "email": format!("{}@example.com", name.replace(' ', ".")),
        },
        "targets": [{"id": doc, "type": "document", "name": format!("Quarterly plan {}", i % 97)}],
        "result": if i % 13 == 6 { "failure" } else { "success" },
        "description": description,
        "tags": ["web", TAGS[i % 2]],
        "context": {
            "ip": format!("203.0.{}.{}", i / 250, i % 250 + 1),
            "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0 Safari/537.36",
            "request": {"method": "POST", "path": format!("/api/documents/{doc}"), "status": 200},
        },
        "metadata": {"plan": "pro", "role": "editor", "session": format!("s-{:08x}", i * 2_654_435_761 % 0xffff_ffff), "seats": i % 50},
    })
}

/// The single-event bodies: every template, serialized.
#[must_use]
pub fn single_bodies() -> Vec<Vec<u8>> {
    (0..TEMPLATES)
        .map(|i| serde_json::to_vec(&event(i, None)).expect("serializes"))
        .collect()
}

/// A batch body of [`BATCH`] events starting at template `offset`; `marker`
/// is passed to every event.
#[must_use]
pub fn batch_body(offset: usize, marker: Option<&str>) -> Vec<u8> {
    let events: Vec<Value> = (0..BATCH).map(|k| event(offset + k, marker)).collect();
    serde_json::to_vec(&json!({ "events": events })).expect("serializes")
}
