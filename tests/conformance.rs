//! conformance.md lists exactly the SOP classes and transfer syntaxes the SCP negotiates.

use jnsc::net::presentation::{
    PROPOSED_TRANSFER_SYNTAXES, RESULT_SOP_CLASSES, STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES,
    VERIFICATION,
};
use std::collections::BTreeSet;

/// UIDs in the second column of the markdown table rows between `from` and `to`.
fn table_uids(text: &str, from: &str, to: &str) -> BTreeSet<String> {
    let start = text
        .find(from)
        .unwrap_or_else(|| panic!("`{from}` not in conformance.md"));
    let end = start
        + text[start..]
            .find(to)
            .unwrap_or_else(|| panic!("`{to}` not found"));
    text[start..end]
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let uid = cells.get(2)?;
            (uid.starts_with("1.2.840.10008.")
                && uid.chars().all(|c| c.is_ascii_digit() || c == '.'))
            .then(|| uid.to_string())
        })
        .collect()
}

#[test]
fn conformance_statement_matches_what_the_code_negotiates() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conformance.md")).unwrap();
    let abstract_syntaxes = table_uids(&text, "Abstract syntaxes:", "Transfer syntaxes, accepted");
    let mut expected: BTreeSet<String> = STORAGE_SOP_CLASSES
        .iter()
        .map(|(uid, _)| uid.to_string())
        .collect();
    expected.insert(VERIFICATION.to_string());
    assert_eq!(abstract_syntaxes, expected);

    let transfer_syntaxes = table_uids(&text, "Transfer syntaxes, accepted", "Not accepted");
    let expected: BTreeSet<String> = TRANSFER_SYNTAXES
        .iter()
        .map(|(uid, _)| uid.to_string())
        .collect();
    assert_eq!(transfer_syntaxes, expected);

    // The SCU side: what is proposed for the results.
    let proposed = table_uids(
        &text,
        "Proposed presentation contexts",
        "Transfer syntaxes proposed",
    );
    let expected: BTreeSet<String> = RESULT_SOP_CLASSES
        .iter()
        .map(|(uid, _)| uid.to_string())
        .collect();
    assert_eq!(proposed, expected);
    let proposed = table_uids(
        &text,
        "Transfer syntaxes proposed",
        "End of proposed contexts",
    );
    let expected: BTreeSet<String> = PROPOSED_TRANSFER_SYNTAXES
        .iter()
        .map(|(uid, _)| uid.to_string())
        .collect();
    assert_eq!(proposed, expected);
}
