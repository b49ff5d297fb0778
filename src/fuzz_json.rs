//! Damaged JSON for the seeded randomized runs over the JSON faces (PeerJS,
//! SkyWay, chat): valid messages with values swapped for other types, keys
//! dropped or added, strings made huge or odd, structures nested deep.
//! `VESSEL_FUZZ_SEED=<n>` replays a run.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};

/// The run's generator, and its seed (print it on failure).
pub fn rng() -> (StdRng, u64) {
    let seed = std::env::var("VESSEL_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    (StdRng::seed_from_u64(seed), seed)
}

/// A value of any JSON type, small.
pub fn any(rng: &mut StdRng, depth: u32) -> Value {
    match rng.random_range(0..if depth > 3 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => json!(rng.random::<bool>()),
        2 => json!(rng.random::<i64>()),
        3 => json!(rng.random::<f64>() * 1e300),
        4 => Value::String(text(rng)),
        5 => Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| any(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let mut m = Map::new();
            for _ in 0..rng.random_range(0..4) {
                m.insert(text(rng), any(rng, depth + 1));
            }
            Value::Object(m)
        }
    }
}

/// A string: empty, ordinary, odd characters, or long.
pub fn text(rng: &mut StdRng) -> String {
    match rng.random_range(0..6) {
        0 => String::new(),
        1 => "x".repeat(rng.random_range(1..100_000)),
        2 => "\u{0}\u{202e}💥\\\"</script>".into(),
        3 => (0..rng.random_range(1..40))
            .map(|_| char::from_u32(rng.random_range(0..0x11_0000)).unwrap_or('?'))
            .collect(),
        _ => format!("v{}", rng.random_range(0..8)),
    }
}

/// A damaged copy of `v`.
pub fn mutate(rng: &mut StdRng, v: &Value) -> Value {
    let mut v = v.clone();
    for _ in 0..rng.random_range(1..4) {
        damage(rng, &mut v, 0);
    }
    v
}

fn damage(rng: &mut StdRng, v: &mut Value, depth: u32) {
    match v {
        Value::Object(m) if !m.is_empty() && rng.random_bool(0.7) => {
            let keys: Vec<String> = m.keys().cloned().collect();
            let k = &keys[rng.random_range(0..keys.len())];
            match rng.random_range(0..4) {
                0 => {
                    m.remove(k);
                }
                1 => {
                    m.insert(text(rng), any(rng, depth));
                }
                _ => damage(rng, m.get_mut(k).expect("a key of m"), depth + 1),
            }
        }
        Value::Array(a) if !a.is_empty() && rng.random_bool(0.7) => {
            let i = rng.random_range(0..a.len());
            damage(rng, &mut a[i], depth + 1);
        }
        _ => {
            *v = match rng.random_range(0..4) {
                // Deep nesting: a parser or a walker that recurses must
                // not blow the stack.
                0 => (0..rng.random_range(1..200)).fold(Value::Null, |inner, _| json!([inner])),
                _ => any(rng, depth),
            }
        }
    }
}
