//! The core and the wire contract agree: every business reject code of
//! paymesh-core has the same name and position in `paymesh.common.v1.RejectCode`,
//! so mapping one to the other is a table lookup that cannot drift.

use paymesh_core::RejectCode;
use paymesh_proto::common::v1::RejectCode as WireRejectCode;

/// A name with case and underscores removed: `REJECT_CODE_PARTNER_NOT_FOUND`
/// without its prefix and `PartnerNotFound` both become `partnernotfound`.
fn folded(name: &str) -> String {
    name.replace('_', "").to_lowercase()
}

#[test]
fn every_core_reject_code_has_its_wire_twin_at_the_same_position() {
    for (index, code) in RejectCode::ALL.iter().enumerate() {
        let number = i32::try_from(index + 1).unwrap();
        let wire = WireRejectCode::try_from(number).unwrap_or_else(|_| panic!("no wire code {number} for {code:?}"));
        let wire_name = wire.as_str_name().strip_prefix("REJECT_CODE_").expect("every value carries the enum's prefix");
        assert_eq!(folded(wire_name), folded(&format!("{code:?}")), "wire code {number}");
    }
    let past_end = i32::try_from(RejectCode::ALL.len() + 1).unwrap();
    assert!(WireRejectCode::try_from(past_end).is_err(), "the wire has codes the core does not know");
}
