//! `TenantId` validation: clear, typed errors for every kind of bad id.

use fanout::{InvalidTenantId, TenantId};

#[test]
fn accepts_the_allowed_characters_up_to_128_bytes() {
    for id in [
        "a",
        "creche-042",
        "Tenant_7.eu-west-1",
        &"x".repeat(128),
        "0",
    ] {
        let tenant = TenantId::new(id).unwrap();
        assert_eq!(tenant.as_str(), id);
        assert_eq!(tenant.to_string(), id);
        assert_eq!(id.parse::<TenantId>().unwrap(), tenant);
        assert_eq!(TenantId::try_from(id).unwrap(), tenant);
        assert_eq!(TenantId::try_from(id.to_string()).unwrap(), tenant);
    }
}

#[test]
fn rejects_empty_and_too_long() {
    assert_eq!(TenantId::new(""), Err(InvalidTenantId::Empty));
    assert_eq!(
        TenantId::new("").unwrap_err().to_string(),
        "tenant id is empty"
    );
    assert_eq!(
        TenantId::new("x".repeat(129)),
        Err(InvalidTenantId::TooLong { len: 129 })
    );
    assert_eq!(
        TenantId::new("x".repeat(129)).unwrap_err().to_string(),
        "tenant id is 129 bytes long; the limit is 128"
    );
}

#[test]
fn rejects_whitespace_control_separators_wildcards_and_non_ascii() {
    let cases = [
        ("creche 42", ' ', 6),
        ("tab\there", '\t', 3),
        ("nl\n", '\n', 2),
        ("nul\0", '\0', 3),
        ("del\u{7f}", '\u{7f}', 3),
        ("tenant:1", ':', 6),
        ("*", '*', 0),
        ("ten/ant", '/', 3),
        ("crèche", 'è', 2),
        ("日本", '日', 0),
    ];
    for (id, found, at) in cases {
        let error = TenantId::new(id).unwrap_err();
        assert_eq!(error, InvalidTenantId::InvalidChar { found, at }, "{id:?}");
        let message = error.to_string();
        assert!(message.contains(&format!("{found:?}")), "{message}");
        assert!(
            message.ends_with("only ASCII letters, digits, '-', '_' and '.' are allowed"),
            "{message}"
        );
        assert!(!message.contains('\n'), "one line: {message:?}");
    }
    assert!(matches!(
        TenantId::try_from(String::from("a b")),
        Err(InvalidTenantId::InvalidChar { .. })
    ));
}

#[test]
fn rejects_ids_that_are_only_dots() {
    for id in [".", "..", "...", &".".repeat(128)] {
        assert_eq!(TenantId::new(id), Err(InvalidTenantId::OnlyDots), "{id}");
        assert_eq!(
            id.parse::<TenantId>().unwrap_err().to_string(),
            "tenant id is only dots"
        );
    }
    for id in ["a.", ".a", "..a", "1.0"] {
        assert!(TenantId::new(id).is_ok(), "{id}");
    }
}
