//! Tidy checks and smoke tests of the wire contract.
//!
//! The `.proto` files are the contract partners, regions and operators code
//! against, so their rules are checked here as ordinary tests rather than left
//! to review: every declaration is documented, packages are versioned
//! `paymesh.<name>.v1` and live in the matching directory, there are no
//! floating-point fields, enums start at `_UNSPECIFIED = 0` with their own
//! value prefix, and every rpc has request and response messages of its own.
//! The checker is a plain function so that a test can show it failing on a bad
//! input. The other tests exercise the generated code and the embedded file
//! descriptor set.

use std::{
    fmt, fs,
    path::{Path, PathBuf},
};

use paymesh_proto::{
    common::v1::{CorridorId, Money, RejectCode},
    interregion::v1::{Decision, DecisionBatch, DecisionItem},
    partner::v1::{create_quote_request, CreateQuoteRequest, Payee, Transfer, TransferState},
    FILE_DESCRIPTOR_SET,
};
use prost::Message;

/// One broken rule at one line of one `.proto` file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Violation {
    /// Path of the file relative to `proto/`.
    file: String,
    /// 1-based line number; 0 for a rule about the whole file.
    line: usize,
    /// What is wrong.
    message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

/// The kind of `{ ... }` block a line is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Service,
    Message,
    Enum,
    Oneof,
    /// Any other braces, for example an rpc or option body.
    Other,
}

/// An enum being read: its value prefix and whether a value was seen yet.
#[derive(Debug)]
struct OpenEnum {
    prefix: String,
    seen_value: bool,
}

/// Checks one `.proto` file against the house rules and returns every
/// violation found. `rel_path` is the path relative to `proto/`, for example
/// `paymesh/partner/v1/partner.proto`; it names the file in violations and is
/// checked against the package.
fn check_proto(rel_path: &str, text: &str) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut report = |line: usize, message: String| {
        violations.push(Violation { file: rel_path.to_owned(), line, message });
    };

    let mut blocks: Vec<Block> = Vec::new();
    let mut enums: Vec<OpenEnum> = Vec::new();
    let mut prev_is_comment = false;
    let mut first_content_seen = false;
    let mut packages = 0;
    let mut has_proto3 = false;
    let mut messages: Vec<String> = Vec::new();
    // (line, rpc name, type) for every request and response type.
    let mut rpc_types: Vec<(usize, String, String)> = Vec::new();
    // (line, type) for every field type.
    let mut field_types: Vec<(usize, String)> = Vec::new();

    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let (code, comment) = split_comment(raw);
        let code = code.trim();
        let is_comment_line = code.is_empty() && comment;

        if !first_content_seen && !raw.trim().is_empty() {
            first_content_seen = true;
            if !is_comment_line {
                report(line_no, "the file must start with a `//` header comment explaining its role".into());
            }
        }
        if code.contains("/*") {
            report(line_no, "use `//` comments, not `/* */`".into());
        }
        if code.is_empty() {
            prev_is_comment = is_comment_line;
            continue;
        }

        let words: Vec<&str> = code
            .split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == '{')
            .filter(|w| !w.is_empty())
            .collect();
        let first = words.first().copied().unwrap_or_default();
        let innermost = blocks.last().copied();
        let mut opens = None;

        match first {
            "syntax" => has_proto3 |= code.replace(' ', "") == "syntax=\"proto3\";",
            "package" => {
                packages += 1;
                let name = code.trim_start_matches("package").trim().trim_end_matches(';').trim();
                check_package(name, rel_path, line_no, &mut report);
            }
            "import" | "option" | "reserved" | "extensions" | "}" => {}
            "service" | "message" | "enum" | "oneof" | "rpc" => {
                let name = words.get(1).copied().unwrap_or_default();
                if !prev_is_comment {
                    report(line_no, format!("{first} `{name}` is not directly preceded by a `//` comment"));
                }
                match first {
                    "service" => opens = Some(Block::Service),
                    "message" => {
                        messages.push(name.to_owned());
                        opens = Some(Block::Message);
                    }
                    "enum" => {
                        enums.push(OpenEnum { prefix: format!("{}_", upper_snake(name)), seen_value: false });
                        opens = Some(Block::Enum);
                    }
                    "oneof" => opens = Some(Block::Oneof),
                    _ => {
                        let (input, output) = rpc_signature(code);
                        for ty in [input, output] {
                            rpc_types.push((line_no, name.to_owned(), ty));
                        }
                        opens = Some(Block::Other);
                    }
                }
            }
            _ if code.contains('=') && code.ends_with(';') => match innermost {
                Some(Block::Message | Block::Oneof) => {
                    let name = field_name(code);
                    if !prev_is_comment {
                        report(line_no, format!("field `{name}` is not directly preceded by a `//` comment"));
                    }
                    let floaty = code
                        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .any(|t| matches!(t, "float" | "double" | "FloatValue" | "DoubleValue"));
                    if floaty {
                        report(
                            line_no,
                            format!(
                                "field `{name}` is a float or double; use \
                                 paymesh.common.v1.Money or a decimal string"
                            ),
                        );
                    }
                    field_types.push((line_no, field_type(code)));
                }
                Some(Block::Enum) => {
                    let name = code.split('=').next().unwrap_or_default().trim();
                    if !prev_is_comment {
                        report(line_no, format!("enum value `{name}` is not directly preceded by a `//` comment"));
                    }
                    if let Some(open) = enums.last_mut() {
                        if !name.starts_with(&open.prefix) {
                            report(line_no, format!("enum value `{name}` must start with `{}`", open.prefix));
                        }
                        if !open.seen_value {
                            let wanted = format!("{}UNSPECIFIED=0;", open.prefix);
                            if code.replace(' ', "") != wanted {
                                report(line_no, format!("the first value must be `{}UNSPECIFIED = 0`", open.prefix));
                            }
                        }
                        open.seen_value = true;
                    }
                }
                _ => report(line_no, format!("unexpected statement `{code}`")),
            },
            _ => report(line_no, format!("unrecognised line `{code}`")),
        }

        // Track nesting. A line that opens and closes a block (`rpc ... {}`)
        // leaves the stack as it was.
        let open_count = code.matches('{').count();
        let close_count = code.matches('}').count();
        if open_count > close_count {
            blocks.push(opens.unwrap_or(Block::Other));
        }
        for _ in open_count..close_count {
            if blocks.pop() == Some(Block::Enum) {
                enums.pop();
            }
        }
        prev_is_comment = false;
    }

    if !has_proto3 {
        report(0, "missing `syntax = \"proto3\";`".into());
    }
    if packages != 1 {
        report(0, format!("expected exactly one package line, found {packages}"));
    }
    if !blocks.is_empty() {
        report(0, "unbalanced braces".into());
    }

    // Every rpc has request and response messages of its own, declared in
    // this file, so that each can grow without affecting another rpc.
    for (i, (line, rpc, ty)) in rpc_types.iter().enumerate() {
        if !messages.contains(ty) {
            report(*line, format!("rpc `{rpc}` uses `{ty}`, which is not a message of this file"));
        }
        if rpc_types[..i].iter().any(|(_, _, other)| other == ty) {
            report(*line, format!("rpc `{rpc}` reuses `{ty}`; give every rpc its own messages"));
            continue;
        }
        if let Some((field_line, _)) = field_types.iter().find(|(_, t)| t == ty) {
            report(*field_line, format!("`{ty}` is an rpc request or response and must not be a field type"));
        }
    }
    violations
}

/// Checks that a package is `paymesh.<name>.v1` and that the file lives in
/// `paymesh/<name>/v1/`.
fn check_package(name: &str, rel_path: &str, line: usize, report: &mut impl FnMut(usize, String)) {
    let parts: Vec<&str> = name.split('.').collect();
    let well_formed = parts.len() == 3
        && parts[0] == "paymesh"
        && parts[2] == "v1"
        && parts[1].starts_with(|c: char| c.is_ascii_lowercase())
        && parts[1].chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !well_formed {
        report(line, format!("package `{name}` does not match `paymesh.<name>.v1`"));
        return;
    }
    let dir = format!("{}/", parts.join("/"));
    let in_dir = rel_path.strip_prefix(&dir).is_some_and(|rest| !rest.contains('/'));
    if !in_dir {
        report(line, format!("package `{name}` must live directly in `proto/{dir}`"));
    }
}

/// Splits a line into its code and whether it has a `//` comment, ignoring
/// `//` inside string literals.
fn split_comment(line: &str) -> (&str, bool) {
    let mut in_string = false;
    let mut previous = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '"' if previous != '\\' => in_string = !in_string,
            '/' if !in_string && previous == '/' => return (&line[..i - 1], true),
            _ => {}
        }
        previous = c;
    }
    (line, false)
}

/// The request and response type names of an rpc line, without `stream`.
fn rpc_signature(code: &str) -> (String, String) {
    let mut groups = code
        .split('(')
        .skip(1)
        .map(|g| g.split(')').next().unwrap_or_default())
        .map(|g| g.trim().trim_start_matches("stream ").trim().to_owned());
    let input = groups.next().unwrap_or_default();
    let output = groups.next().unwrap_or_default();
    (input, output)
}

/// The name of the field declared by `code`: the word before `=`.
fn field_name(code: &str) -> &str {
    code.split('=').next().and_then(|lhs| lhs.split_whitespace().last()).unwrap_or_default()
}

/// The type of the field declared by `code`: the word before its name.
fn field_type(code: &str) -> String {
    let lhs: Vec<&str> = code.split('=').next().unwrap_or_default().split_whitespace().collect();
    let ty = if lhs.len() >= 2 { lhs[lhs.len() - 2] } else { "" };
    ty.rsplit('.').next().unwrap_or_default().to_owned()
}

/// `PrepareResult` -> `PREPARE_RESULT`.
fn upper_snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// The workspace's `proto/` directory.
fn proto_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto")
}

/// Every `.proto` file under `dir`, recursively, sorted.
fn proto_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "proto") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_proto_file_follows_the_house_rules() {
    let root = proto_root();
    let files = proto_files(&root);
    let relative: Vec<String> = files
        .iter()
        .map(|p| p.strip_prefix(&root).expect("under proto/").to_string_lossy().replace('\\', "/"))
        .collect();
    for expected in [
        "paymesh/admin/v1/admin.proto",
        "paymesh/admin/v1/history.proto",
        "paymesh/common/v1/common.proto",
        "paymesh/interregion/v1/interregion.proto",
        "paymesh/partner/v1/partner.proto",
        "paymesh/raft/v1/raft.proto",
    ] {
        assert!(relative.iter().any(|r| r == expected), "missing {expected}; found {relative:?}");
    }

    let mut violations = Vec::new();
    for (path, rel) in files.iter().zip(&relative) {
        let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{rel}: {e}"));
        violations.extend(check_proto(rel, &text));
    }
    let listing: Vec<String> = violations.iter().map(ToString::to_string).collect();
    assert!(violations.is_empty(), "{} violation(s):\n{}", violations.len(), listing.join("\n"));
}

/// A well-formed file: the checker must accept it, so the bad cases below
/// fail for the reasons they name and nothing else.
const GOOD_PROTO: &str = r#"// A small file that follows every rule.
syntax = "proto3";

package paymesh.sample.v1;

// A service.
service SampleService {
  // An rpc.
  rpc Get(GetRequest) returns (stream GetResponse);
}

// Colours.
enum Colour {
  // Unset.
  COLOUR_UNSPECIFIED = 0;
  // Red.
  COLOUR_RED = 1;
}

// Request of Get.
message GetRequest {
  // An id.
  string id = 1 [json_name = "id//not-a-comment"];
  // One of two.
  oneof choice {
    // First choice.
    string a = 2;
    // Second choice.
    Colour b = 3;
  }
}

// Response of Get.
message GetResponse {
  // An amount.
  paymesh.common.v1.Money amount = 1;
}
"#;

#[test]
fn checker_accepts_a_well_formed_file() {
    let violations = check_proto("paymesh/sample/v1/sample.proto", GOOD_PROTO);
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn checker_reports_an_undocumented_field_a_float_and_a_bad_package() {
    let bad = r#"// Header.
syntax = "proto3";

package paymesh.bad;

// A message with problems.
message Bad {
  // Documented.
  string documented = 1;
  string undocumented = 2;
  // A float.
  double price = 3;
}

// An enum without an unspecified zero value.
enum Shade {
  // Dark.
  SHADE_DARK = 0;
  LIGHT = 1;
}
"#;
    let violations = check_proto("paymesh/bad/v1/bad.proto", bad);
    let at = |line: usize, needle: &str| {
        violations.iter().any(|v| v.file == "paymesh/bad/v1/bad.proto" && v.line == line && v.message.contains(needle))
    };
    assert!(at(10, "field `undocumented` is not directly preceded by a `//` comment"), "{violations:#?}");
    assert!(at(12, "field `price` is a float or double"), "{violations:#?}");
    assert!(at(4, "package `paymesh.bad` does not match `paymesh.<name>.v1`"), "{violations:#?}");
    assert!(at(18, "the first value must be `SHADE_UNSPECIFIED = 0`"), "{violations:#?}");
    assert!(at(19, "enum value `LIGHT` is not directly preceded"), "{violations:#?}");
    assert!(at(19, "must start with `SHADE_`"), "{violations:#?}");
    assert_eq!(violations.len(), 6, "{violations:#?}");
}

#[test]
fn checker_reports_undocumented_declarations_and_shared_rpc_messages() {
    let bad = r#"// Header.
syntax = "proto3";

// Package.
package paymesh.other.v1;

service Undocumented {
  rpc A(Req) returns (Resp);
  // Reuses A's messages.
  rpc B(Req) returns (Resp);
}

message Req {
  // Uses an rpc message as a field.
  Resp inner = 1;
}

// Response.
message Resp {
  // A field separated from its comment by a blank line does not count.

  string x = 1;
}
"#;
    let violations = check_proto("paymesh/misplaced/v1/other.proto", bad);
    let messages: Vec<String> = violations.iter().map(ToString::to_string).collect();
    let expected = [
        "paymesh/misplaced/v1/other.proto:5: package `paymesh.other.v1` must live directly in `proto/paymesh/other/v1/`",
        "paymesh/misplaced/v1/other.proto:7: service `Undocumented` is not directly preceded by a `//` comment",
        "paymesh/misplaced/v1/other.proto:8: rpc `A` is not directly preceded by a `//` comment",
        "paymesh/misplaced/v1/other.proto:13: message `Req` is not directly preceded by a `//` comment",
        "paymesh/misplaced/v1/other.proto:22: field `x` is not directly preceded by a `//` comment",
        "paymesh/misplaced/v1/other.proto:10: rpc `B` reuses `Req`; give every rpc its own messages",
        "paymesh/misplaced/v1/other.proto:10: rpc `B` reuses `Resp`; give every rpc its own messages",
        "paymesh/misplaced/v1/other.proto:15: `Resp` is an rpc request or response and must not be a field type",
    ];
    for line in expected {
        assert!(messages.iter().any(|m| m == line), "missing {line:?} in {messages:#?}");
    }
    assert_eq!(messages.len(), expected.len(), "{messages:#?}");
}

fn usd(amount: &str) -> Option<Money> {
    Some(Money { amount: amount.into(), currency: "USD".into() })
}

#[test]
fn generated_messages_round_trip_through_prost() {
    let quote = CreateQuoteRequest {
        qr_payload: "https://qr.alipay.com/fkx12345".into(),
        amount: Some(create_quote_request::Amount::DestinationAmount(Money {
            amount: "88.00".into(),
            currency: "CNY".into(),
        })),
        idempotency_key: String::new(),
    };
    let decoded = CreateQuoteRequest::decode(quote.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(decoded, quote);

    let transfer = Transfer {
        transfer_id: "us-west:42".into(),
        idempotency_key: "order-7781".into(),
        quote_id: "us-west:q9".into(),
        corridor: Some(CorridorId {
            source_currency: "USD".into(),
            source_region: "us-west".into(),
            destination_currency: "CNY".into(),
            destination_region: "cn-east".into(),
        }),
        state: TransferState::Aborted.into(),
        abort_reason: RejectCode::InsufficientPosition.into(),
        source_amount: usd("12.25"),
        fee: usd("0.50"),
        destination_amount: Some(Money { amount: "88.00".into(), currency: "CNY".into() }),
        rate: "7.183673469387".into(),
        payee: Some(Payee {
            partner_id: "alipay-cn".into(),
            merchant_id: "fkx12345".into(),
            region: "cn-east".into(),
            currency: "CNY".into(),
        }),
        payer_token: "pt_0123456789abcdef0123456789abcdef".into(),
        created_unix_ms: 1_700_000_000_000,
        updated_unix_ms: 1_700_000_000_250,
        deadline_unix_ms: 1_700_000_030_000,
    };
    let decoded = Transfer::decode(transfer.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(decoded, transfer);
    assert_eq!(decoded.state(), TransferState::Aborted);
    assert_eq!(decoded.abort_reason(), RejectCode::InsufficientPosition);

    let batch = DecisionBatch {
        from_region: "us-west".into(),
        items: vec![DecisionItem {
            transfer_id: "us-west:42".into(),
            decision: Decision::Abort.into(),
            traceparent: String::new(),
            window: 12,
        }],
        protocol: 2,
    };
    let decoded = DecisionBatch::decode(batch.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(decoded, batch);
}

#[test]
fn readers_skip_fields_added_by_a_newer_contract() {
    // A newer Money with an extra field 15 (a varint) must still decode, so
    // that adding fields never breaks older readers.
    let mut bytes = usd("1.00").expect("some").encode_to_vec();
    bytes.extend_from_slice(&[15 << 3, 1]);
    let decoded = Money::decode(bytes.as_slice()).expect("decodes");
    assert_eq!(Some(decoded), usd("1.00"));

    // An enum value this build does not know decodes and reads as the
    // `_UNSPECIFIED` default through the typed accessor.
    let transfer = Transfer { state: 99, ..Transfer::default() };
    let decoded = Transfer::decode(transfer.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(decoded.state, 99);
    assert_eq!(decoded.state(), TransferState::Unspecified);
}

#[test]
fn reject_codes_keep_their_numbers() {
    // Reject codes are persisted and compared across versions: their numbers
    // must never change. The list is the contract's order.
    let names = [
        "REJECT_CODE_UNSPECIFIED",
        "REJECT_CODE_PARTNER_NOT_FOUND",
        "REJECT_CODE_PARTNER_SUSPENDED",
        "REJECT_CODE_PARTNER_ROLE_NOT_ALLOWED",
        "REJECT_CODE_PARTNER_NOT_IN_REGION",
        "REJECT_CODE_CORRIDOR_NOT_FOUND",
        "REJECT_CODE_CORRIDOR_SUSPENDED",
        "REJECT_CODE_RATE_UNAVAILABLE",
        "REJECT_CODE_RATE_NOT_APPLICABLE",
        "REJECT_CODE_CURRENCY_MISMATCH",
        "REJECT_CODE_REGION_MISMATCH",
        "REJECT_CODE_AMOUNT_BELOW_MINIMUM",
        "REJECT_CODE_AMOUNT_ABOVE_MAXIMUM",
        "REJECT_CODE_DAILY_CAP_EXCEEDED",
        "REJECT_CODE_QUOTE_NOT_FOUND",
        "REJECT_CODE_QUOTE_EXPIRED",
        "REJECT_CODE_QUOTE_ALREADY_USED",
        "REJECT_CODE_PAYEE_NOT_FOUND",
        "REJECT_CODE_PAYEE_MISMATCH",
        "REJECT_CODE_IDEMPOTENCY_CONFLICT",
        "REJECT_CODE_INSUFFICIENT_POSITION",
        "REJECT_CODE_BALANCE_OVERFLOW",
        "REJECT_CODE_TRANSFER_NOT_FOUND",
        "REJECT_CODE_DEADLINE_EXCEEDED",
        "REJECT_CODE_ABORTED_BEFORE_PREPARE",
        "REJECT_CODE_PROTOCOL_VIOLATION",
        "REJECT_CODE_STALE_COMMAND",
        "REJECT_CODE_CAPACITY_EXCEEDED",
        "REJECT_CODE_PARTNER_QUOTES_EXHAUSTED",
        "REJECT_CODE_PARTNER_TRANSFERS_EXHAUSTED",
        "REJECT_CODE_REFUND_EXCEEDS_ORIGINAL",
        "REJECT_CODE_REFUND_WINDOW_CLOSED",
        "REJECT_CODE_TRANSFER_NOT_COMMITTED",
        "REJECT_CODE_WINDOW_NOT_FOUND",
        "REJECT_CODE_WINDOW_NOT_CLOSED",
        "REJECT_CODE_NOTHING_TO_SETTLE",
        "REJECT_CODE_ALREADY_SETTLED",
        "REJECT_CODE_NOT_SETTLEABLE",
        "REJECT_CODE_CANCEL_WINDOW_CLOSED",
        "REJECT_CODE_ALREADY_REFUNDED",
        "REJECT_CODE_PRICE_ABOVE_LIMIT",
        "REJECT_CODE_WEBHOOK_NOT_FOUND",
    ];
    for (number, name) in names.iter().enumerate() {
        let number = i32::try_from(number).expect("small");
        let code = RejectCode::try_from(number).expect("defined");
        assert_eq!(code.as_str_name(), *name);
        assert_eq!(RejectCode::from_str_name(name), Some(code));
    }
    let past_end = i32::try_from(names.len()).expect("small");
    assert!(RejectCode::try_from(past_end).is_err());
}

/// The parts of `google/protobuf/descriptor.proto` this test reads, with the
/// same field numbers; prost skips every other field.
mod descriptor {
    /// `google.protobuf.FileDescriptorSet`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FileDescriptorSet {
        #[prost(message, repeated, tag = "1")]
        pub file: Vec<FileDescriptorProto>,
    }

    /// `google.protobuf.FileDescriptorProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FileDescriptorProto {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub package: String,
        #[prost(message, repeated, tag = "6")]
        pub service: Vec<ServiceDescriptorProto>,
    }

    /// `google.protobuf.ServiceDescriptorProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ServiceDescriptorProto {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, repeated, tag = "2")]
        pub method: Vec<MethodDescriptorProto>,
    }

    /// `google.protobuf.MethodDescriptorProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MethodDescriptorProto {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(bool, tag = "5")]
        pub client_streaming: bool,
        #[prost(bool, tag = "6")]
        pub server_streaming: bool,
    }
}

#[test]
fn file_descriptor_set_describes_every_service() {
    assert!(!FILE_DESCRIPTOR_SET.is_empty());
    for service in ["PartnerService", "InterRegionService", "RaftService", "AdminService", "ClusterService"] {
        assert!(
            FILE_DESCRIPTOR_SET.windows(service.len()).any(|w| w == service.as_bytes()),
            "{service} not in FILE_DESCRIPTOR_SET"
        );
    }

    // prost_types is not a dependency of this crate, so decode with a minimal
    // mirror of descriptor.proto. The rpc lists below are the contract's
    // surface: removing or renaming an rpc is a breaking change and must fail
    // here; adding one means extending the list.
    let set = descriptor::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("decodes");
    let mut packages: Vec<&str> = set.file.iter().map(|f| f.package.as_str()).collect();
    packages.sort_unstable();
    packages.dedup();
    assert_eq!(
        packages,
        ["paymesh.admin.v1", "paymesh.common.v1", "paymesh.interregion.v1", "paymesh.partner.v1", "paymesh.raft.v1",]
    );
    let methods = |package: &str, service: &str| -> Vec<(String, bool, bool)> {
        set.file
            .iter()
            .filter(|f| f.package == package)
            .flat_map(|f| &f.service)
            .filter(|s| s.name == service)
            .flat_map(|s| &s.method)
            .map(|m| (m.name.clone(), m.client_streaming, m.server_streaming))
            .collect()
    };
    let unary = |names: &[&str]| -> Vec<(String, bool, bool)> {
        names.iter().map(|n| ((*n).to_owned(), false, false)).collect()
    };

    let mut partner = unary(&[
        "LookupPayee",
        "CreateQuote",
        "CreateTransfer",
        "CreatePayment",
        "CreateTransfers",
        "GetTransfer",
        "ListTransfers",
        "GetPosition",
        "GetStatement",
    ]);
    partner.push(("StreamEvents".into(), false, true));
    partner.extend(unary(&["CreateRefund", "GetRefund", "ListRefunds", "CancelTransfer"]));
    assert_eq!(methods("paymesh.partner.v1", "PartnerService"), partner);

    assert_eq!(methods("paymesh.interregion.v1", "InterRegionService"), unary(&["Prepare", "Decide", "Reconcile"]));

    let mut raft = vec![("AppendEntries".into(), true, true)];
    raft.extend(unary(&["Vote"]));
    raft.push(("InstallSnapshot".into(), true, false));
    raft.extend(unary(&["AppendHistory"]));
    assert_eq!(methods("paymesh.raft.v1", "RaftService"), raft);

    assert_eq!(
        methods("paymesh.admin.v1", "AdminService"),
        unary(&[
            "UpsertPartner",
            "SetPartnerStatus",
            "SetPartnerLimits",
            "GetPartner",
            "ListPartners",
            "UpsertCorridor",
            "SetCorridorStatus",
            "SetCorridorRefundRate",
            "GetCorridor",
            "ListCorridors",
            "SetFxRate",
            "TopUpPosition",
            "FundOutPosition",
            "UpsertPayeeRoute",
            "RemovePayeeRoute",
            "ListPayeeRoutes",
            "GetLedgerSummary",
            "GetAccountStatement",
            "SetRegionSettings",
            "GetRegionSettings",
            "ReverseTransfer",
            "CloseSettlementWindow",
            "GetSettlementWindow",
            "RecordSettlement",
            "GetReceivedTallies",
        ])
        .into_iter()
        .chain([("GetSettlementFile".to_owned(), false, true)])
        .chain(unary(&["SetWebhook", "RemoveWebhook", "ReplayWebhook", "ListWebhooks"]))
        .collect::<Vec<_>>()
    );
    assert_eq!(
        methods("paymesh.admin.v1", "ClusterService"),
        unary(&["Initialize", "GetNodeStatus", "AddNode", "RemoveNode", "TriggerSnapshot"])
            .into_iter()
            .chain([("Backup".to_owned(), false, true)])
            .chain(unary(&["FinalizeUpgrade"]))
            .collect::<Vec<_>>()
    );
    let mut history = vec![("ExportHistory".into(), false, true)];
    history.extend(unary(&["ConfirmArchive", "DeleteHistory", "GetHistoryStatus"]));
    assert_eq!(methods("paymesh.admin.v1", "HistoryService"), history);
}
