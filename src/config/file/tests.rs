use std::io::Write;

use super::super::Config;
use super::*;

fn with_file(text: &str, args: &[&str]) -> Result<(Config, HashMap<String, LiveRules>), LoadError> {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("vessel-config-{}-{n}.toml", std::process::id()));
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .unwrap();
    let mut argv: Vec<OsString> = vec!["vessel".into(), "--config".into(), path.clone().into()];
    argv.extend(args.iter().map(OsString::from));
    let result = parse::<Config>(argv);
    let _ = std::fs::remove_file(path);
    result
}

fn message(e: LoadError) -> String {
    match e {
        LoadError::Invalid(m) => m,
        LoadError::Clap(e) => e.to_string(),
    }
}

#[test]
fn file_values_apply_and_flags_win() {
    let text = r#"
        http = "127.0.0.1:9000"
        workers = 3
        open = true
        cors-origin = ["https://a.example", "https://b.example"]
        turn-secret = "s3cret"
    "#;
    let (c, lives) = with_file(text, &[]).unwrap();
    assert_eq!(c.http, "127.0.0.1:9000".parse().unwrap());
    assert_eq!(c.workers, Some(3));
    assert!(c.access.open);
    assert_eq!(c.cors_origin, ["https://a.example", "https://b.example"]);
    assert_eq!(c.turn.secret.as_deref(), Some("s3cret"));
    assert!(lives.is_empty());

    let (c, _) = with_file(text, &["--http", "127.0.0.1:9100", "--cors-origin", "*"]).unwrap();
    assert_eq!(c.http, "127.0.0.1:9100".parse().unwrap(), "the flag wins");
    assert_eq!(c.cors_origin, ["*"]);
    assert_eq!(c.workers, Some(3), "the file still fills the rest");
}

#[test]
fn lives_tables_give_keys_and_privacy() {
    let text = r#"
        [lives.show]
        key = "a-long-stream-key"
        [lives.vip]
        key = "another-long-key"
        private = true
    "#;
    let (_, lives) = with_file(text, &[]).unwrap();
    assert_eq!(lives["show"].key.as_deref(), Some("a-long-stream-key"));
    assert!(!lives["show"].private);
    assert!(lives["vip"].private);
}

#[test]
fn unknown_keys_and_bad_values_name_the_key() {
    let m = message(with_file("htpp = \"127.0.0.1:1\"", &[]).unwrap_err());
    assert!(m.contains("unknown key `htpp`"), "{m}");
    let m = message(with_file("workers = \"many\"", &[]).unwrap_err());
    assert!(m.contains("key `workers`") && m.contains("many"), "{m}");
    let m = message(with_file("workers = 0", &[]).unwrap_err());
    assert!(m.contains("key `workers`"), "{m}");
    let m = message(with_file("open = \"yes\"", &[]).unwrap_err());
    assert!(m.contains("key `open`"), "{m}");
    let m = message(with_file("[lives.show]\nkye = \"abcdefghij\"", &[]).unwrap_err());
    assert!(m.contains("[lives.show]") && m.contains("kye"), "{m}");
    let m = message(with_file("[lives.show]\nkey = \"short\"", &[]).unwrap_err());
    assert!(m.contains("too short"), "{m}");
    let m = message(with_file("[lives.\"bad name\"]\nkey = \"abcdefghij\"", &[]).unwrap_err());
    assert!(m.contains("invalid live name"), "{m}");
    let m = message(with_file("http = [", &[]).unwrap_err());
    assert!(
        m.contains("vessel-config"),
        "a syntax error names the file: {m}"
    );
    let m = message(with_file("config = \"other.toml\"", &[]).unwrap_err());
    assert!(m.contains("unknown key `config`"), "{m}");
}

#[test]
fn a_missing_file_is_an_error() {
    let argv = ["vessel", "--config", "/nonexistent/vessel.toml"]
        .map(OsString::from)
        .to_vec();
    let m = message(parse::<Config>(argv).unwrap_err());
    assert!(
        m.contains("cannot read the config file /nonexistent/vessel.toml"),
        "{m}"
    );
}

#[test]
fn the_example_config_parses() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/vessel.example.toml"))
        .unwrap();
    let (c, lives) = with_file(&text, &[]).unwrap();
    assert!(!lives.is_empty());
    assert!(c.access.admin_token.is_some());
}

#[test]
fn cluster_keys_come_from_the_file() {
    let text = r#"
        cluster = "redis://127.0.0.1:6379/0"
        cluster-secret = "s3cret"
        node-url = "http://10.0.0.2:8080"
        node-capacity = 300
    "#;
    let (c, _) = with_file(text, &[]).unwrap();
    assert_eq!(
        c.cluster.cluster.as_deref(),
        Some("redis://127.0.0.1:6379/0")
    );
    assert_eq!(c.cluster.cluster_secret.as_deref(), Some("s3cret"));
    assert_eq!(c.cluster.node_url.as_deref(), Some("http://10.0.0.2:8080"));
    assert_eq!(c.cluster.node_capacity, Some(300));
    let m = message(with_file("node-capacity = -1", &[]).unwrap_err());
    assert!(m.contains("key `node-capacity`"), "{m}");
}
