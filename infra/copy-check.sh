#!/usr/bin/env bash
# `make copy-check`: proves that the reusable crates copy out of this workspace. For each crate
# (default: crates/outbox, crates/idempotent-consumer and crates/claim-check) it builds a fresh
# Cargo project outside the workspace, the way a user would: the crate and the crates/ it needs
# by path, every `workspace = true` written out from the root Cargo.toml, no test-support. Then
# `cargo build`, `cargo test --lib` (unit tests; the integration tests in tests/ need the real
# stack and eda-test-support, which do not copy out) and `cargo test --doc` (doc comments and the
# README, where the crate includes it as doctests).
#
#   infra/copy-check.sh [crates/<name>...]
#
# Settings (environment):
#   COPY_CHECK_DIR          where the copies go     (default ${TMPDIR:-/tmp}/eda-copy-check)
#   COPY_CHECK_TARGET_DIR   one target dir for all  (default $EDA_CACHE_DIR/copy-check-target)
#   COPY_CHECK_FRESH_LOCK=1 resolve versions anew, as a user's project would; by default the
#                           workspace's Cargo.lock is copied, so the check tests the copy and
#                           not what crates.io published since
#   COPY_CHECK_STRICT=1     a dependency the crate's sources never name is an error, not a warning
#
# Idempotent: files are synced (written only when their content changes), so a warm run
# rebuilds nothing and costs little more than compiling the doctests.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"
# shellcheck source=infra/env.sh
source infra/env.sh
# shellcheck source=infra/lib.sh
source infra/lib.sh
COMPONENT=copy-check

need cargo "install Rust (rustup)"
need python3 "install Python 3.11 or newer (tomllib)"
python3 -c 'import tomllib' 2>/dev/null || die "python3 has no tomllib: Python 3.11 or newer is needed"

copy_root=${COPY_CHECK_DIR:-${TMPDIR:-/tmp}/eda-copy-check}
mkdir -p "$copy_root"
copy_root=$(cd "$copy_root" && pwd -P)
case "$copy_root/" in
  "$(pwd -P)"/*) die "COPY_CHECK_DIR ($copy_root) is inside the workspace: the copies must stand outside it" ;;
esac
target_dir=${COPY_CHECK_TARGET_DIR:-$EDA_CACHE_DIR/copy-check-target}
mkdir -p "$target_dir"

crates=("$@")
[ ${#crates[@]} -gt 0 ] || crates=(crates/outbox crates/idempotent-consumer crates/claim-check)

# copy_out CRATE_DIR OUT_DIR: writes the fresh project; prints the package name on stdout and
# what it changed on stderr. The TOML is rewritten line by line (tomllib reads, nothing in the
# standard library writes), then read back to prove no `workspace = true` is left.
copy_out() {
  python3 - "$root" "$1" "$2" <<'PY'
import os, re, shutil, sys, tomllib
from pathlib import Path

root, crate_rel, out = Path(sys.argv[1]), sys.argv[2].rstrip("/"), Path(sys.argv[3])
ws = tomllib.loads((root / "Cargo.toml").read_text())
ws_pkg = ws["workspace"].get("package", {})
ws_deps = ws["workspace"].get("dependencies", {})
ws_lints = ws["workspace"].get("lints", {})
crates_dir = (root / "crates").resolve()
notes = []

def fail(msg):
    print(f"copy-check: {crate_rel}: {msg}", file=sys.stderr)
    sys.exit(1)

def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    fail(f"cannot write TOML value {v!r}")

def dep_tables(manifest):
    """(kind, table) for every dependency table, target-specific ones included."""
    for kind in ("dependencies", "dev-dependencies", "build-dependencies"):
        yield kind, manifest.get(kind, {})
    for target in manifest.get("target", {}).values():
        for kind in ("dependencies", "dev-dependencies", "build-dependencies"):
            yield kind, target.get(kind, {})

def resolved(name, spec, crate_dir):
    """A member's dependency spec with `workspace = true` merged in; paths made absolute."""
    if isinstance(spec, str):
        spec = {"version": spec}
    spec = dict(spec)
    if spec.pop("workspace", False):
        base = ws_deps.get(name)
        if base is None:
            fail(f"{name}: workspace = true, but the root Cargo.toml has no such dependency")
        base = {"version": base} if isinstance(base, str) else dict(base)
        features = list(base.get("features", []))
        features += [f for f in spec.pop("features", []) if f not in features]
        if features:
            base["features"] = features
        base.update(spec)  # optional, default-features (member keys win)
        spec = base
        if "path" in spec:
            spec["path"] = str((root / spec["path"]).resolve())
    elif "path" in spec:
        spec["path"] = str((crate_dir / spec["path"]).resolve())
    return spec

# 1. What the crate needs from crates/: the closure of its path dependencies. Path
# dev-dependencies are left out (the integration tests that use them are not run); a path
# dependency outside crates/ cannot be copied out at all.
needed, todo = {}, [(root / crate_rel).resolve()]
while todo:
    d = todo.pop()
    if d in needed:
        continue
    if not (d / "Cargo.toml").is_file():
        fail(f"{d} has no Cargo.toml")
    manifest = tomllib.loads((d / "Cargo.toml").read_text())
    needed[d] = manifest
    for kind, table in dep_tables(manifest):
        for name, spec in table.items():
            spec = resolved(name, spec, d)
            if "path" not in spec:
                continue
            p = Path(spec["path"])
            if kind == "dev-dependencies":
                continue
            if crates_dir not in p.parents:
                fail(f"{manifest['package']['name']} depends on {name} at {p}, outside crates/: "
                     "it cannot be copied out")
            todo.append(p)

main_dir = (root / crate_rel).resolve()
main_name = needed[main_dir]["package"]["name"]
out_of = {d: out / "crates" / d.name for d in needed}

# 2. Sync the directories: a file is written only when its content differs, so a warm run
# touches nothing and cargo rebuilds nothing (the source's mtime is not copied: it can be older
# than the last build of the copy); stale files are removed.
def sync(src, dst, top=True):
    dst.mkdir(parents=True, exist_ok=True)
    names = {p.name for p in src.iterdir() if p.name not in ("target", "Cargo.lock")}
    for p in dst.iterdir():
        if p.name not in names:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    for n in sorted(names):
        s, t = src / n, dst / n
        if s.is_dir():
            if t.exists() and not t.is_dir():
                t.unlink()
            sync(s, t, top=False)
        elif not (top and n == "Cargo.toml"):  # the crate's Cargo.toml is rewritten below
            if t.is_dir():
                shutil.rmtree(t)
            if not t.exists() or t.read_bytes() != s.read_bytes():
                shutil.copyfile(s, t)  # a fresh mtime: cargo must see the change
                shutil.copymode(s, t)

def write_if_changed(path, text):
    if not path.exists() or path.read_text() != text:
        path.write_text(text)

# 3. Each Cargo.toml, line by line: `[package]` fields, dependency lines and `[lints]`.
DEP_HEADER = re.compile(r"^\[(?:target\.[^\]]+\.)?(dependencies|dev-dependencies|build-dependencies)\]$")
def rewrite(src_dir, dst_dir, manifest):
    name = manifest["package"]["name"]
    lines, table, skip_lints = [], None, False
    for raw in (src_dir / "Cargo.toml").read_text().splitlines():
        line = raw.strip()
        if line.startswith("["):
            table, skip_lints = line, False
            if line == "[lints]" and manifest.get("lints", {}).get("workspace"):
                # The workspace's lints, written out (the project's choice; drop them freely).
                skip_lints = True
                for tool, rules in ws_lints.items():
                    lines.append(f"[lints.{tool}]")
                    lines += [f"{k} = {toml_value(v)}" for k, v in rules.items()]
                    lines.append("")
                if lines[-1] == "":
                    lines.pop()
                notes.append(f"{name}: [lints] workspace = true -> the workspace's lints written out")
                continue
            lines.append(raw)
            continue
        if skip_lints or not line or line.startswith("#"):
            if not skip_lints:
                lines.append(raw)
            continue
        try:
            parsed = tomllib.loads(line)
        except tomllib.TOMLDecodeError:
            lines.append(raw)  # part of a multi-line value: checked below
            continue
        (key, value), = parsed.items()
        if table == "[package]" and isinstance(value, dict) and value.get("workspace") is True:
            if key not in ws_pkg:
                fail(f"{name}: {key}.workspace = true, but [workspace.package] has no {key}")
            lines.append(f"{key} = {toml_value(ws_pkg[key])}")
            continue
        m = DEP_HEADER.match(table or "")
        if m:
            kind = m.group(1)
            spec = resolved(key, value, src_dir)
            if "path" in spec:
                p = Path(spec["path"])
                if kind == "dev-dependencies":
                    notes.append(f"{name}: dev-dependency {key} dropped (path {os.path.relpath(p, root)}; "
                                 "only the integration tests in tests/ use it)")
                    continue
                spec["path"] = os.path.relpath(out_of[p], dst_dir)
            if isinstance(value, dict) and ("workspace" in value or "path" in value):
                lines.append(f"{key} = {toml_value(spec)}")
                continue
        lines.append(raw)
    text = "\n".join(lines) + "\n"
    check = tomllib.loads(text)
    def has_workspace(v):
        if isinstance(v, dict):
            return "workspace" in v or any(has_workspace(x) for x in v.values())
        return False
    if has_workspace(check):
        fail(f"{name}: `workspace` is still in the rewritten Cargo.toml (a multi-line table?)")
    write_if_changed(dst_dir / "Cargo.toml", text)

for d, manifest in needed.items():
    sync(d, out_of[d])
    rewrite(d, out_of[d], manifest)

# 4. The fresh project itself: a user's service that depends on the crate by path.
members = sorted(f"crates/{d.name}" for d in needed)
app = f'''# A fresh project outside the eda-pitfalls workspace that copied {main_name} (infra/copy-check.sh).
[package]
name = "copy-check-app"
version = "0.1.0"
edition = {toml_value(ws_pkg.get("edition", "2024"))}
publish = false

[dependencies]
{main_name} = {{ path = "crates/{main_dir.name}" }}

[workspace]
resolver = "3"
members = [{", ".join(toml_value(m) for m in ["."] + members)}]

# Not needed by the crates: keeps the check's target dir small (as the workspace does).
[profile.dev]
debug = "line-tables-only"

[profile.dev.package."*"]
debug = false
'''
write_if_changed(out / "Cargo.toml", app)
(out / "src").mkdir(exist_ok=True)
write_if_changed(out / "src" / "lib.rs",
                 f"//! A service that copied {main_name}.\n\npub use {main_name.replace('-', '_')};\n")
for n in notes:
    print(f"copy-check: {n}", file=sys.stderr)
print(main_name)
PY
}

# unused_deps CRATE_OUT_DIR: the crate's normal dependencies that its src/ never names (by
# `name::`, `use name`, `name!` or `#[name::`). A heuristic: a dependency kept only to turn on a
# feature of another would show up here too, and should then say so in a comment.
unused_deps() {
  python3 - "$1" <<'PY'
import re, sys, tomllib
from pathlib import Path
d = Path(sys.argv[1])
m = tomllib.loads((d / "Cargo.toml").read_text())
src = "\n".join(p.read_text() for p in (d / "src").rglob("*.rs"))
for name, spec in m.get("dependencies", {}).items():
    ident = name.replace("-", "_")  # a renamed dependency (`package = ..`) is named by its key
    if not re.search(rf"(?<![\w:])(?:::)?{re.escape(ident)}(?:::|!)|\buse {re.escape(ident)}\b", src):
        print(name)
PY
}

failed=()
t_all=$SECONDS
for crate in "${crates[@]}"; do
  crate=${crate%/}
  [ -f "$crate/Cargo.toml" ] || die "$crate: no Cargo.toml (run from the workspace root; crates/<name>)"
  out="$copy_root/$(basename "$crate")"
  t0=$SECONDS
  say "$crate -> $out"
  if ! name=$(copy_out "$crate" "$out"); then
    failed+=("$crate (copy)"); warn "$crate: could not be copied out (see above)"; continue
  fi
  if [ -z "${COPY_CHECK_FRESH_LOCK:-}" ]; then
    cp Cargo.lock "$out/Cargo.lock"
  elif [ ! -f "$out/.fresh-lock" ]; then
    rm -f "$out/Cargo.lock"; touch "$out/.fresh-lock"
  fi

  ok=1
  for step in "build" "test --lib" "test --doc"; do
    say "$name: cargo $step"
    # shellcheck disable=SC2086 # the step is two words on purpose
    if ! (cd "$out" && CARGO_TARGET_DIR="$target_dir" cargo $step -p "$name"); then
      warn "$name: 'cargo $step' failed in the copy at $out"
      failed+=("$name (cargo $step)"); ok=0; break
    fi
  done
  [ "$ok" -eq 1 ] || continue

  crate_out="$out/crates/$(basename "$crate")"
  mapfile -t unused < <(unused_deps "$crate_out")
  for dir in "$out"/crates/*/; do
    [ "$dir" = "$crate_out/" ] && continue
    mapfile -t more < <(unused_deps "$dir")
    for dep in "${more[@]}"; do unused+=("$dep (of $(basename "$dir"))"); done
  done
  ntree=$(cd "$out" && CARGO_TARGET_DIR="$target_dir" cargo tree -p "$name" -e normal --prefix none 2>/dev/null \
    | sed 's/ (\*)$//' | sort -u | wc -l)
  say "$name: $ntree packages in its dependency tree (normal dependencies, itself included)"
  if [ ${#unused[@]} -gt 0 ]; then
    msg="$name: dependencies its src/ never names: ${unused[*]}"
    if [ -n "${COPY_CHECK_STRICT:-}" ]; then
      warn "$msg"; failed+=("$name (unused dependencies)"); continue
    fi
    warn "$msg (COPY_CHECK_STRICT=1 makes this an error)"
  fi
  say "$name builds on its own ($((SECONDS - t0))s; copy at $out)"
done

if [ ${#failed[@]} -gt 0 ]; then
  die "copy-check failed: ${failed[*]}"
fi
say "${#crates[@]} crate(s) copy out cleanly in $((SECONDS - t_all))s"
