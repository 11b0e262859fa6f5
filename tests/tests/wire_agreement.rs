//! The core and the wire contract agree: every business reject code of
//! paymesh-core has the same name and position in `paymesh.common.v1.RejectCode`,
//! so mapping one to the other is a table lookup that cannot drift.

use paymesh_core::RejectCode;
use paymesh_proto::common::v1::RejectCode as WireRejectCode;

/// `PartnerNotFound` → `PARTNER_NOT_FOUND`.
fn screaming_snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[test]
fn every_core_reject_code_has_its_wire_twin_at_the_same_position() {
    for (index, code) in RejectCode::ALL.iter().enumerate() {
        let number = i32::try_from(index + 1).unwrap();
        let wire = WireRejectCode::try_from(number).unwrap_or_else(|_| panic!("no wire code {number} for {code:?}"));
        assert_eq!(wire.as_str_name(), format!("REJECT_CODE_{}", screaming_snake(&format!("{code:?}"))));
    }
    let past_end = i32::try_from(RejectCode::ALL.len() + 1).unwrap();
    assert!(WireRejectCode::try_from(past_end).is_err(), "the wire has codes the core does not know");
}

#[test]
fn name_conversion_is_what_the_comparison_relies_on() {
    assert_eq!(screaming_snake("PartnerNotFound"), "PARTNER_NOT_FOUND");
    assert_eq!(screaming_snake("StaleCommand"), "STALE_COMMAND");
}
