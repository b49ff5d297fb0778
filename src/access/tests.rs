use std::collections::HashMap;

use super::*;

fn access(open: bool, lives: &[(&str, Option<&str>, bool)]) -> Access {
    Access::new(AccessConfig {
        open,
        local_only: false,
        admin_token: Some("admin-secret".into()),
        viewer_token_secret: Some("viewer-secret".into()),
        lives: lives
            .iter()
            .map(|(name, key, private)| {
                (
                    name.to_string(),
                    LiveRules {
                        key: key.map(String::from),
                        private: *private,
                        ..Default::default()
                    },
                )
            })
            .collect::<HashMap<_, _>>(),
        webhook: None,
    })
}

#[test]
fn a_live_with_a_key_needs_that_key_even_on_an_open_server() {
    let a = access(true, &[("show", Some("k1"), false)]);
    assert!(a.check_cast("show", Some("k1")).is_ok());
    assert!(
        matches!(a.check_cast("show", Some("k2")), Err(Denied::Unauthorized(r)) if r.contains("wrong"))
    );
    assert!(
        matches!(a.check_cast("show", None), Err(Denied::Unauthorized(r)) if r.contains("Bearer"))
    );
    // Other lives stay open.
    assert!(a.check_cast("other", None).is_ok());
}

#[test]
fn a_closed_server_refuses_lives_without_a_key_and_says_how_to_fix_it() {
    let a = access(false, &[]);
    let Err(Denied::Unauthorized(reason)) = a.check_cast("demo", None) else {
        panic!("must refuse");
    };
    assert!(
        reason.contains("[lives.demo]") && reason.contains("open = true"),
        "{reason}"
    );
}

#[test]
fn created_keys_work_and_revoked_keys_stop_working() {
    let a = access(false, &[]);
    let key = a.create_key("show", None);
    assert_eq!(key.len(), 48, "192 random bits in hex");
    assert!(a.check_cast("show", Some(&key)).is_ok());
    let rotated = a.create_key("show", None);
    assert_ne!(key, rotated);
    assert!(
        a.check_cast("show", Some(&key)).is_err(),
        "old key after rotation"
    );
    assert!(a.revoke_key("show"));
    assert!(a.check_cast("show", Some(&rotated)).is_err());
    assert!(!a.revoke_key("show"), "nothing left to revoke");
    // Rotating a private live's key keeps it private unless told otherwise.
    a.create_key("vip", Some(true));
    a.create_key("vip", None);
    assert!(a.is_private("vip"));
    a.create_key("vip", Some(false));
    assert!(!a.is_private("vip"));
}

#[test]
fn private_lives_need_a_valid_token_for_that_live() {
    let a = access(false, &[("vip", Some("k"), true)]);
    assert!(a.check_play("public", None).is_ok());
    assert!(matches!(
        a.check_play("vip", None),
        Err(Denied::Unauthorized(_))
    ));
    let (token, _) = a.mint_token("vip", 60).unwrap();
    assert!(a.check_play("vip", Some(&token)).is_ok());

    let (other, _) = a.mint_token("public", 60).unwrap();
    assert!(
        matches!(a.check_play("vip", Some(&other)), Err(Denied::Unauthorized(r)) if r.contains("'public'"))
    );

    let forger = ViewerTokens::new(b"not-the-secret");
    let (forged, _) = forger.mint("vip", 60);
    assert!(
        matches!(a.check_play("vip", Some(&forged)), Err(Denied::Unauthorized(r)) if r.contains("signature"))
    );

    assert!(matches!(
        a.check_play("vip", Some("garbage")),
        Err(Denied::Unauthorized(_))
    ));
}

#[test]
fn expired_tokens_are_refused() {
    let tokens = ViewerTokens::new(b"s");
    let claims = serde_json::json!({"live": "vip", "exp": 1_000_000_000u64});
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"s"),
    )
    .unwrap();
    assert_eq!(tokens.check(&expired, "vip"), Err(TokenError::Expired));
    let no_exp = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"live": "vip"}),
        &jsonwebtoken::EncodingKey::from_secret(b"s"),
    )
    .unwrap();
    assert!(matches!(
        tokens.check(&no_exp, "vip"),
        Err(TokenError::Malformed(_))
    ));
}

#[test]
fn the_admin_api_needs_the_token_or_a_loopback_only_server() {
    let a = access(false, &[]);
    assert!(a.check_admin(Some("admin-secret")).is_ok());
    assert!(a.check_admin(Some("nope")).is_err());
    assert!(a.check_admin(None).is_err());
    let exposed_without_token = Access::new(AccessConfig {
        open: false,
        local_only: false,
        admin_token: None,
        viewer_token_secret: None,
        lives: HashMap::new(),
        webhook: None,
    });
    assert!(matches!(
        exposed_without_token.check_admin(None),
        Err(Denied::Forbidden(_))
    ));
    assert!(Access::open().check_admin(None).is_ok());
}

#[test]
fn bearer_tokens_are_read_from_the_header() {
    assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
    assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
    assert_eq!(bearer(Some("Basic abc")), None);
    assert_eq!(bearer(Some("Bearer ")), None);
    assert_eq!(bearer(None), None);
}

#[test]
fn a_patch_changes_only_what_it_names() {
    let rules = LiveRules {
        key: Some("k".into()),
        private: true,
        record: false,
    };
    let record = RulesPatch {
        record: Some(true),
        ..RulesPatch::default()
    };
    assert_eq!(
        record.apply(&rules),
        LiveRules {
            record: true,
            ..rules.clone()
        }
    );
    let revoke = RulesPatch {
        key: Some(None),
        ..RulesPatch::default()
    };
    assert_eq!(revoke.apply(&rules).key, None);
    assert!(revoke.apply(&rules).private, "revoking keeps the rest");
    // What the cluster's script merges: a revoke says `"key": null`, a
    // change of one setting names only it.
    assert_eq!(serde_json::to_string(&revoke).unwrap(), r#"{"key":null}"#);
    assert_eq!(
        serde_json::to_string(&record).unwrap(),
        r#"{"record":true}"#
    );
}

#[test]
fn stored_rules_apply_unless_a_newer_version_was_heard() {
    let a = access(true, &[("file", Some("from-file"), false)]);
    let private = LiveRules {
        private: true,
        ..LiveRules::default()
    };
    // Redis overrides the config file's rules of a live.
    let before = a.apply_stored("file", private.clone(), 10).unwrap();
    assert_eq!(before.key.as_deref(), Some("from-file"));
    assert_eq!(a.rules("file"), private);
    // A change heard late (an older version) is ignored; the same version
    // (the writer's own copy and its echo) is taken again.
    assert!(a.apply_stored("file", LiveRules::default(), 9).is_none());
    assert!(a.is_private("file"));
    assert!(a.apply_stored("file", LiveRules::default(), 11).is_some());
    assert_eq!(a.rules("file"), LiveRules::default());
}

#[test]
fn keys_stay_out_of_debug_output() {
    let rules = LiveRules {
        key: Some("super-secret-key".into()),
        ..LiveRules::default()
    };
    assert!(!format!("{rules:?}").contains("super-secret"));
}
