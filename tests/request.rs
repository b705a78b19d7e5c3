//! The export request path (`snapdelta export --request`): every rule of
//! docs/request.md with its code and location, objects written into the
//! bucket and nowhere else, requestId replays across processes, customer
//! keys and the Operation checked against docs/operation.schema.json.

mod common;
use common::*;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="; // bytes 0..32
const KEY_SHA256: &str = "Yw3NKWbEM2aRElRIu7JbT/QSpJxzLbLIq8G4WBvXEN0=";
const OTHER_KEY: &str = "AQECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// A snapshot directory `snaps`, a bucket root `buckets` with the bucket
/// `bkt`, and snapshots of the disk `d1`: `s1` (older) and `s2` (newer,
/// one 4 KiB block changed), `s0` of another disk, `s3` newer than `s2`.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("snaps")).unwrap();
        std::fs::create_dir_all(d.join("buckets/bkt")).unwrap();
        let env = Env { dir };
        let base = env.snap("s1", "d1", "2026-12-01T10:00:00Z", None);
        fill(&base, 0, 65536, 0x11);
        let target = env.snap("s2", "d1", "2026-12-02T10:00:00Z", None);
        fill(&target, 0, 65536, 0x11);
        fill(&target, 8192, 4096, 0x22);
        let other = env.snap("s0", "d9", "2026-11-01T10:00:00Z", None);
        fill(&other, 0, 65536, 0x11);
        let newer = env.snap("s3", "d1", "2026-12-03T10:00:00+02:00", None);
        fill(&newer, 0, 65536, 0x33);
        env
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `NAME.json` and returns the path of `NAME.img`.
    fn snap(&self, name: &str, disk: &str, time: &str, key_sha256: Option<&str>) -> PathBuf {
        let mut meta = json!({"sourceDisk": disk, "creationTimestamp": time});
        if let Some(sha) = key_sha256 {
            meta["encryptionKeySha256"] = json!(sha);
        }
        let snaps = self.path().join("snaps");
        std::fs::write(snaps.join(format!("{name}.json")), meta.to_string()).unwrap();
        snaps.join(format!("{name}.img"))
    }

    /// Runs the request `body` on the target `target`; returns the answer
    /// and the exit code.
    fn request(&self, target: &str, body: &Value, extra: &[&str]) -> (Value, i32) {
        let file = self.path().join("req.json");
        std::fs::write(&file, body.to_string()).unwrap();
        self.request_raw(target, &file, extra)
    }

    fn request_raw(&self, target: &str, file: &Path, extra: &[&str]) -> (Value, i32) {
        let mut args = vec![
            "export",
            "--request",
            file.to_str().unwrap(),
            "--snapshots",
            "snaps",
            "--buckets",
            "buckets",
        ];
        args.extend(extra);
        args.push(target);
        let out = run(self.path(), &args);
        let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "no Operation on stdout ({e}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (answer, out.status.code().unwrap())
    }

    /// Every path under the work directory but the snapshots and the
    /// request file, as text.
    fn listing(&self) -> Vec<String> {
        fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                if rel == "snaps" || rel == "req.json" {
                    continue;
                }
                out.push(rel);
                if p.symlink_metadata().unwrap().is_dir() {
                    walk(&p, root, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(self.path(), self.path(), &mut out);
        out.sort();
        out
    }
}

fn params(object: &str) -> Value {
    json!({"exportParams": {
        "baseInstantSnapshot": "s1",
        "bucketName": "bkt",
        "objectName": object,
        "outputType": "METADATA_AND_DATA"
    }})
}

/// Validates every answer against docs/operation.schema.json with the
/// `jsonschema` Python package (draft 2020-12, formats checked).
fn validate(answers: &[Value]) {
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operation.schema.json");
    let script = r#"
import json, sys, jsonschema
schema = json.load(open(sys.argv[1]))
v = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
bad = 0
for i, line in enumerate(sys.stdin):
    for e in v.iter_errors(json.loads(line)):
        print(f"answer {i}: {e.message} at {list(e.absolute_path)}")
        bad += 1
sys.exit(1 if bad else 0)
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .arg(schema)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with jsonschema (apt-get install python3-jsonschema)");
    let mut input = String::new();
    for a in answers {
        input.push_str(&a.to_string());
        input.push('\n');
    }
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "schema: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn error_of(answer: &Value) -> (String, String) {
    let e = &answer["error"]["errors"][0];
    (
        e["code"].as_str().unwrap_or("").to_string(),
        e["location"].as_str().unwrap_or("").to_string(),
    )
}

/// A row of the rule table: what, target, body, extra arguments, the
/// expected code and location.
type Case<'a> = (&'a str, &'a str, Value, &'a [&'a str], &'a str, String);

/// Every rule of the request, each with its code and location; the object
/// names include every name of the B16 report (`../escape`,
/// `a/../../escape`, `/escape`, a newline, `.`, `..`, empty), none of
/// which creates a file anywhere.
#[test]
fn every_rule_answers_its_code_and_location() {
    let env = Env::new();
    env.snap("s5", "d1", "2026-12-01T10:00:00Z", None); // same time as s1
    fill(&env.path().join("snaps/s5.img"), 0, 4096, 1);
    // s7: protected by KEY; s6: its base, protected too.
    let s6 = env.snap("s6", "d7", "2026-12-01T10:00:00Z", Some(KEY_SHA256));
    fill(&s6, 0, 65536, 5);
    let s7 = env.snap("s7", "d7", "2026-12-02T10:00:00Z", Some(KEY_SHA256));
    fill(&s7, 0, 65536, 6);
    // s8 has broken metadata.
    std::fs::write(env.path().join("snaps/s8.json"), "{\"sourceDisk\": 1}").unwrap();
    fill(&env.path().join("snaps/s8.img"), 0, 4096, 1);
    std::fs::create_dir(env.path().join("outside")).unwrap();
    std::os::unix::fs::symlink("../outside", env.path().join("buckets/evil")).unwrap();
    std::fs::create_dir(env.path().join("buckets/bkt/adir")).unwrap();
    // Hard links to inputs at an object name, and at a raw sparse map's.
    std::fs::hard_link(
        env.path().join("snaps/s2.img"),
        env.path().join("buckets/bkt/hard"),
    )
    .unwrap();
    std::fs::hard_link(
        env.path().join("snaps/s1.img"),
        env.path().join("buckets/bkt/hard.raw.map"),
    )
    .unwrap();

    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = params("obj.sdx");
        f(&mut v);
        v
    };
    let p = |field: &str, value: Value| {
        let field = field.to_string();
        with(&move |v: &mut Value| v["exportParams"][&field] = value.clone())
    };
    let drop = |field: &str| {
        let field = field.to_string();
        with(&move |v: &mut Value| {
            v["exportParams"].as_object_mut().unwrap().remove(&field);
        })
    };
    let keyed = |key: Value, ty: &str, base: &str| {
        json!({"exportParams": {"baseInstantSnapshot": base, "bucketName": "bkt",
               "objectName": "obj.sdx", "outputType": ty, "encryptionKey": key}})
    };
    let long = "n".repeat(1024);
    let long_1023 = "n".repeat(1023);
    let long_236 = "n".repeat(236);
    let ep = "exportParams.";
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("unknown target", "nope", params("obj.sdx"), &[], "RESOURCE_NOT_FOUND", "instantSnapshot".into()),
        ("target name with a path", "../snaps/s2", params("obj.sdx"), &[], "INVALID_FIELD_VALUE", "instantSnapshot".into()),
        ("target metadata broken", "s8", drop("baseInstantSnapshot"), &[], "INVALID_SNAPSHOT_METADATA", "instantSnapshot".into()),
        ("body not JSON", "s2", json!("not an object"), &[], "INVALID_REQUEST_BODY", "exportParams".into()),
        ("no exportParams", "s2", json!({}), &[], "REQUIRED_FIELD_MISSING", "exportParams".into()),
        ("unknown field", "s2", p("colour", json!("red")), &[], "UNKNOWN_FIELD", format!("{ep}colour")),
        ("field of the wrong type", "s2", p("objectName", json!(7)), &[], "INVALID_FIELD_VALUE", format!("{ep}objectName")),
        ("unknown base", "s2", p("baseInstantSnapshot", json!("nope")), &[], "RESOURCE_NOT_FOUND", format!("{ep}baseInstantSnapshot")),
        ("base from another disk", "s2", p("baseInstantSnapshot", json!("s0")), &[], "BASE_FROM_OTHER_DISK", format!("{ep}baseInstantSnapshot")),
        ("base newer than the target", "s2", p("baseInstantSnapshot", json!("s3")), &[], "BASE_NOT_OLDER", format!("{ep}baseInstantSnapshot")),
        ("base as old as the target", "s5", p("baseInstantSnapshot", json!("s1")), &[], "BASE_NOT_OLDER", format!("{ep}baseInstantSnapshot")),
        ("base is the target", "s2", p("baseInstantSnapshot", json!("s2")), &[], "BASE_NOT_OLDER", format!("{ep}baseInstantSnapshot")),
        ("no bucketName", "s2", drop("bucketName"), &[], "REQUIRED_FIELD_MISSING", format!("{ep}bucketName")),
        ("missing bucket", "s2", p("bucketName", json!("nobucket")), &[], "RESOURCE_NOT_FOUND", format!("{ep}bucketName")),
        ("bucket name with a path", "s2", p("bucketName", json!("../bkt")), &[], "INVALID_FIELD_VALUE", format!("{ep}bucketName")),
        ("bucket is a symlink out", "s2", p("bucketName", json!("evil")), &[], "INVALID_FIELD_VALUE", format!("{ep}bucketName")),
        ("no objectName", "s2", drop("objectName"), &[], "REQUIRED_FIELD_MISSING", format!("{ep}objectName")),
        ("empty objectName", "s2", params(""), &[], "INVALID_FIELD_VALUE", format!("{ep}objectName")),
        ("objectName of 1024 bytes", "s2", params(&long), &[], "FIELD_VALUE_TOO_LONG", format!("{ep}objectName")),
        ("objectName of 1023 bytes", "s2", params(&long_1023), &[], "FIELD_VALUE_TOO_LONG", format!("{ep}objectName")),
        ("objectName over a file name", "s2", params(&long_236), &[], "FIELD_VALUE_TOO_LONG", format!("{ep}objectName")),
        ("objectName ../escape", "s2", params("../escape"), &[], "OBJECT_NAME_OUTSIDE_BUCKET", format!("{ep}objectName")),
        ("objectName a/../../escape", "s2", params("a/../../escape"), &[], "OBJECT_NAME_OUTSIDE_BUCKET", format!("{ep}objectName")),
        ("objectName /escape", "s2", params("/escape"), &[], "OBJECT_NAME_OUTSIDE_BUCKET", format!("{ep}objectName")),
        ("objectName .", "s2", params("."), &[], "OBJECT_NAME_OUTSIDE_BUCKET", format!("{ep}objectName")),
        ("objectName ..", "s2", params(".."), &[], "OBJECT_NAME_OUTSIDE_BUCKET", format!("{ep}objectName")),
        ("objectName with a newline", "s2", params("x\ny"), &[], "INVALID_FIELD_VALUE", format!("{ep}objectName")),
        ("objectName with a NUL", "s2", params("x\0y"), &[], "INVALID_FIELD_VALUE", format!("{ep}objectName")),
        ("objectName with a slash", "s2", params("a/b"), &[], "INVALID_FIELD_VALUE", format!("{ep}objectName")),
        ("objectName is a directory", "s2", params("adir"), &[], "INVALID_FIELD_VALUE", format!("{ep}objectName")),
        ("no outputType", "s2", drop("outputType"), &[], "REQUIRED_FIELD_MISSING", format!("{ep}outputType")),
        ("outputType INVALID", "s2", p("outputType", json!("INVALID")), &[], "INVALID_FIELD_VALUE", format!("{ep}outputType")),
        ("unknown outputType", "s2", p("outputType", json!("TARBALL")), &[], "INVALID_FIELD_VALUE", format!("{ep}outputType")),
        ("objectName a hard link to the target", "s2", params("hard"), &[], "INVALID_FIELD_VALUE", format!("{ep}objectName")),
        ("raw sparse map a hard link to the base", "s2", params("hard.raw").tap(|v| v["exportParams"]["outputType"] = json!("RAW_SPARSE")), &[], "INVALID_FIELD_VALUE", format!("{ep}objectName")),
        ("requestId not a UUID", "s2", params("obj.sdx"), &["--request-id", "not-a-uuid"], "INVALID_FIELD_VALUE", "requestId".into()),
        ("requestId without hyphens", "s2", params("obj.sdx"), &["--request-id", "3f1c2a8e6a5b4a4f9d7e0c1b2a3d4e5f"], "INVALID_FIELD_VALUE", "requestId".into()),
        ("zero requestId", "s2", params("obj.sdx"), &["--request-id", "00000000-0000-0000-0000-000000000000"], "INVALID_FIELD_VALUE", "requestId".into()),
        ("two kinds of key", "s7", keyed(json!({"rawKey": KEY, "kmsKeyName": "k"}), "METADATA_AND_DATA", "s6"), &[], "CONFLICTING_FIELDS", format!("{ep}encryptionKey")),
        ("rawKey and rsaEncryptedKey", "s7", keyed(json!({"rawKey": KEY, "rsaEncryptedKey": KEY}), "METADATA_AND_DATA", "s6"), &[], "CONFLICTING_FIELDS", format!("{ep}encryptionKey")),
        ("no kind of key", "s7", keyed(json!({}), "METADATA_AND_DATA", "s6"), &[], "REQUIRED_FIELD_MISSING", format!("{ep}encryptionKey")),
        ("rawKey not base64", "s7", keyed(json!({"rawKey": "***"}), "METADATA_AND_DATA", "s6"), &[], "INVALID_FIELD_VALUE", format!("{ep}encryptionKey.rawKey")),
        ("rawKey of 128 bits", "s7", keyed(json!({"rawKey": "AAECAwQFBgcICQoLDA0ODw=="}), "METADATA_AND_DATA", "s6"), &[], "INVALID_FIELD_VALUE", format!("{ep}encryptionKey.rawKey")),
        ("rsaEncryptedKey on the CLI", "s7", keyed(json!({"rsaEncryptedKey": KEY}), "METADATA_AND_DATA", "s6"), &[], "UNSUPPORTED_FIELD", format!("{ep}encryptionKey.rsaEncryptedKey")),
        ("kmsKeyName on the CLI", "s7", keyed(json!({"kmsKeyName": "projects/p/keys/k"}), "METADATA_AND_DATA", "s6"), &[], "UNSUPPORTED_FIELD", format!("{ep}encryptionKey.kmsKeyName")),
        ("protected snapshot without a key", "s7", drop("encryptionKey").tap(|v| v["exportParams"]["baseInstantSnapshot"] = json!("s6")), &[], "KEY_REQUIRED", format!("{ep}encryptionKey")),
        ("protected snapshot, wrong key", "s7", keyed(json!({"rawKey": OTHER_KEY}), "METADATA_AND_DATA", "s6"), &[], "KEY_MISMATCH", format!("{ep}encryptionKey")),
        ("sha256 not the key's", "s7", keyed(json!({"rawKey": KEY, "sha256": "AAAA"}), "METADATA_AND_DATA", "s6"), &[], "KEY_MISMATCH", format!("{ep}encryptionKey.sha256")),
        ("key with a type that cannot carry it", "s7", keyed(json!({"rawKey": KEY}), "RAW_SPARSE", "s6"), &[], "ENCRYPTION_NOT_SUPPORTED", format!("{ep}outputType")),
    ];
    // Bodies JSON cannot hold as a value: a key given twice, at any depth
    // (also when spelt with an escape), whichever value comes first.
    let dup = |inner: &str| {
        format!(
            r#"{{"exportParams": {{"baseInstantSnapshot": "s1", "bucketName": "bkt", "outputType": "METADATA_AND_DATA", {inner}}}}}"#
        )
    };
    let keyed_dup = |key: &str| {
        format!(
            r#"{{"exportParams": {{"baseInstantSnapshot": "s6", "bucketName": "bkt", "objectName": "obj.sdx", "outputType": "METADATA_AND_DATA", "encryptionKey": {key}}}}}"#
        )
    };
    let body_error = "INVALID_REQUEST_BODY";
    #[rustfmt::skip]
    let raw_cases: Vec<(&str, &str, String, &str, String)> = vec![
        ("objectName twice, the bad one first", "s2", dup(r#""objectName": "../y", "objectName": "dup.sdx""#), body_error, format!("{ep}objectName")),
        ("objectName twice, the bad one last", "s2", dup(r#""objectName": "dup.sdx", "objectName": "../y""#), body_error, format!("{ep}objectName")),
        ("objectName twice, same value", "s2", dup(r#""objectName": "dup.sdx", "objectName": "dup.sdx""#), body_error, format!("{ep}objectName")),
        ("objectName twice, once escaped", "s2", dup(r#""objectName": "dup.sdx", "object\u004eame": "dup2.sdx""#), body_error, format!("{ep}objectName")),
        ("exportParams twice", "s2", format!(r#"{{"exportParams": {{}}, "exportParams": {}}}"#, params("dup.sdx")["exportParams"]), body_error, "exportParams".into()),
        ("duplicate in an unknown field", "s2", dup(r#""objectName": "dup.sdx", "colour": {"a": 1, "a": 2}"#), body_error, format!("{ep}colour.a")),
        ("encryptionKey twice", "s7", keyed_dup(&format!(r#"{{"rawKey": "{KEY}"}}, "encryptionKey": {{"rawKey": "{KEY}"}}"#)), body_error, format!("{ep}encryptionKey")),
        ("rawKey twice", "s7", keyed_dup(&format!(r#"{{"rawKey": "{OTHER_KEY}", "rawKey": "{KEY}"}}"#)), body_error, format!("{ep}encryptionKey.rawKey")),
    ];
    let before = env.listing();
    let check = |what: &str, (answer, rc): (Value, i32), code: &str, location: &str| {
        assert_eq!(rc, 1, "{what}: exit code");
        assert_eq!(answer["status"], "DONE", "{what}");
        assert_eq!(
            error_of(&answer),
            (code.to_string(), location.to_string()),
            "{what}: {answer}"
        );
        assert!(
            !answer["error"]["errors"][0]["message"]
                .as_str()
                .unwrap()
                .is_empty(),
            "{what}"
        );
        assert!(answer.get("snapdeltaExport").is_none(), "{what}");
        // Nothing was created, in the bucket or outside it.
        assert_eq!(env.listing(), before, "{what}");
        answer
    };
    let mut answers = Vec::new();
    for (what, target, body, extra, code, location) in &cases {
        answers.push(check(
            what,
            env.request(target, body, extra),
            code,
            location,
        ));
    }
    for (what, target, body, code, location) in &raw_cases {
        let file = env.path().join("req.json");
        std::fs::write(&file, body).unwrap();
        answers.push(check(
            what,
            env.request_raw(target, &file, &[]),
            code,
            location,
        ));
    }
    assert!(!env.path().join("escape").exists());
    validate(&answers);
}

/// `Value::tap`: change a value in an expression.
trait Tap {
    fn tap(self, f: impl FnOnce(&mut Self)) -> Self;
}
impl Tap for Value {
    fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}

#[test]
fn a_request_on_the_ext4_pair_writes_the_object_and_answers_a_valid_operation() {
    let env = Env::new();
    make_ext4_pairs(env.path());
    for (name, time, side) in [
        ("small-base", "2026-12-01T10:00:00Z", "small-base.img"),
        ("small-target", "2026-12-02T10:00:00Z", "small-target.img"),
    ] {
        let img = env.snap(name, "vm-disk-1", time, None);
        std::fs::rename(env.path().join(side), img).unwrap();
    }
    let body = json!({"exportParams": {
        "baseInstantSnapshot": "small-base", "bucketName": "bkt",
        "objectName": "small.sdx", "outputType": "METADATA_AND_DATA"}});
    std::fs::write(env.path().join("req.json"), body.to_string()).unwrap();
    let out = ok(
        env.path(),
        &[
            "export",
            "--request",
            "req.json",
            "--snapshots",
            "snaps",
            "--buckets",
            "buckets",
            "--progress",
            "json",
            "small-target",
        ],
    );
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 3, "{lines:?}");
    let mut last = 0;
    for l in &lines {
        let p = l["progress"].as_u64().unwrap();
        assert!(p >= last, "progress fell from {last} to {p}");
        assert_eq!(l["id"], lines[0]["id"]);
        last = p;
    }
    let answer = lines.last().unwrap();
    assert_eq!(answer["status"], "DONE");
    assert_eq!(answer["progress"], 100);
    assert!(lines[..lines.len() - 1]
        .iter()
        .all(|l| l["status"] == "RUNNING"));
    assert!(answer.get("error").is_none(), "{answer}");
    assert_eq!(answer["targetLink"], "instantSnapshots/small-target");
    let stats = &answer["snapdeltaExport"];
    assert_eq!(stats["objectName"], "small.sdx");
    assert!(stats["dataBytes"].as_u64().unwrap() > 0);
    let object = env.path().join("buckets/bkt/small.sdx");
    assert_eq!(
        std::fs::metadata(&object).unwrap().len(),
        stats["bytesWritten"].as_u64().unwrap()
    );
    assert_eq!(
        std::fs::metadata(&object).unwrap().permissions().mode() & 0o777,
        0o600
    );
    validate(&lines);
    // The object rebuilds the target byte for byte.
    ok(
        env.path(),
        &[
            "apply",
            "--base",
            "snaps/small-base.img",
            "buckets/bkt/small.sdx",
            "-o",
            "rebuilt.img",
        ],
    );
    assert!(
        std::fs::read(env.path().join("rebuilt.img")).unwrap()
            == std::fs::read(env.path().join("snaps/small-target.img")).unwrap()
    );
}

#[test]
fn every_output_type_lands_private_in_the_bucket_and_rebuilds_the_target() {
    let env = Env::new();
    let mut answers = Vec::new();
    for (ty, object) in [
        ("METADATA_AND_DATA", "o.sdx"),
        ("METADATA_ONLY", "o.map.sdx"),
        ("RAW_SPARSE", "o.raw"),
        ("QCOW2", "o.qcow2"),
        ("RBD_DIFF", "o.rbd"),
        ("rbd-diff", "o2.rbd"),
    ] {
        let mut body = params(object);
        body["exportParams"]["outputType"] = json!(ty);
        let (answer, rc) = env.request("s2", &body, &[]);
        assert_eq!(rc, 0, "{ty}: {answer}");
        let path = env.path().join("buckets/bkt").join(object);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{ty}");
        if ty != "METADATA_ONLY" {
            let out = format!("r-{object}.img");
            ok(
                env.path(),
                &[
                    "apply",
                    "--base",
                    "snaps/s1.img",
                    path.to_str().unwrap(),
                    "-o",
                    &out,
                ],
            );
            assert!(
                std::fs::read(env.path().join(&out)).unwrap()
                    == std::fs::read(env.path().join("snaps/s2.img")).unwrap(),
                "{ty}"
            );
        }
        answers.push(answer);
    }
    let map = env.path().join("buckets/bkt/o.raw.map");
    assert_eq!(
        std::fs::metadata(map).unwrap().permissions().mode() & 0o777,
        0o600
    );
    validate(&answers);
}

#[test]
fn a_planted_link_at_the_object_name_is_replaced_never_followed() {
    let env = Env::new();
    std::os::unix::fs::symlink("../../victim", env.path().join("buckets/bkt/planted.ext")).unwrap();
    let (answer, rc) = env.request("s2", &params("planted.ext"), &[]);
    assert_eq!(rc, 0, "{answer}");
    assert!(!env.path().join("victim").exists(), "followed the link");
    let object = env.path().join("buckets/bkt/planted.ext");
    let meta = object.symlink_metadata().unwrap();
    assert!(meta.is_file());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(answer["warnings"][0]["code"], "OBJECT_REPLACED");
    validate(&[answer]);
}

/// A link at the object name (or at a raw sparse map's) that leads to a
/// snapshot's image is replaced like any other link: the export neither
/// refuses it as the image itself nor writes through it.
#[test]
fn a_planted_link_to_an_input_is_replaced_and_the_input_kept() {
    let env = Env::new();
    let snaps = env.path().join("snaps");
    let bkt = env.path().join("buckets/bkt");
    let inputs = [snaps.join("s1.img"), snaps.join("s2.img")];
    let kept: Vec<Vec<u8>> = inputs.iter().map(|p| std::fs::read(p).unwrap()).collect();
    std::os::unix::fs::symlink(&inputs[1], bkt.join("to-target")).unwrap();
    std::os::unix::fs::symlink(&inputs[0], bkt.join("to-base")).unwrap();
    std::os::unix::fs::symlink(&inputs[1], bkt.join("r.raw")).unwrap();
    std::os::unix::fs::symlink(&inputs[0], bkt.join("r.raw.map")).unwrap();
    let raw = params("r.raw").tap(|v| v["exportParams"]["outputType"] = json!("RAW_SPARSE"));
    let mut answers = Vec::new();
    for (body, names) in [
        (params("to-target"), &["to-target"][..]),
        (params("to-base"), &["to-base"]),
        (raw, &["r.raw", "r.raw.map"]),
    ] {
        let (answer, rc) = env.request("s2", &body, &[]);
        assert_eq!(rc, 0, "{names:?}: {answer}");
        assert_eq!(answer["warnings"][0]["code"], "OBJECT_REPLACED");
        for name in names {
            let meta = bkt.join(name).symlink_metadata().unwrap();
            assert!(meta.is_file(), "{name} is still a link");
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
        }
        for (input, bytes) in inputs.iter().zip(&kept) {
            assert!(input.symlink_metadata().unwrap().is_file());
            assert_eq!(&std::fs::read(input).unwrap(), bytes, "{names:?}");
        }
        answers.push(answer);
    }
    ok(
        env.path(),
        &[
            "apply",
            "--base",
            "snaps/s1.img",
            "buckets/bkt/to-target",
            "-o",
            "r.img",
        ],
    );
    assert_eq!(std::fs::read(env.path().join("r.img")).unwrap(), kept[1]);
    validate(&answers);
}

#[test]
fn warnings_for_no_changes_and_a_shrunk_disk() {
    let env = Env::new();
    let same = env.snap("s4", "d1", "2026-12-04T10:00:00Z", None);
    std::fs::copy(env.path().join("snaps/s1.img"), &same).unwrap();
    let (answer, rc) = env.request("s4", &params("same.sdx"), &[]);
    assert_eq!(rc, 0);
    assert_eq!(answer["warnings"][0]["code"], "NO_CHANGES_FOUND");
    let small = env.snap("s9", "d1", "2026-12-05T10:00:00Z", None);
    fill(&small, 0, 4096, 0x11);
    let (shrunk, rc) = env.request("s9", &params("small.sdx"), &[]);
    assert_eq!(rc, 0);
    let codes: Vec<_> = shrunk["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["TARGET_SMALLER_THAN_BASE"]);
    assert_eq!(shrunk["warnings"][0]["data"][0]["value"], "65536");
    ok(
        env.path(),
        &[
            "apply",
            "--base",
            "snaps/s1.img",
            "buckets/bkt/small.sdx",
            "-o",
            "r.img",
        ],
    );
    assert_eq!(
        std::fs::read(env.path().join("r.img")).unwrap(),
        std::fs::read(&small).unwrap()
    );
    validate(&[answer, shrunk]);
}

const ID: &str = "3f1c2a8e-6a5b-4a4f-9d7e-0c1b2a3d4e5f";

#[test]
fn a_replayed_request_id_returns_the_first_answer_without_exporting_again() {
    let env = Env::new();
    let (first, rc) = env.request("s2", &params("once.sdx"), &["--request-id", ID]);
    assert_eq!(rc, 0, "{first}");
    assert_eq!(first["clientOperationId"], ID);
    // The object goes away; a replay answers the same and writes nothing.
    let object = env.path().join("buckets/bkt/once.sdx");
    std::fs::remove_file(&object).unwrap();
    let (again, rc) = env.request("s2", &params("once.sdx"), &["--request-id", ID]);
    assert_eq!(rc, 0);
    assert_eq!(again, first);
    assert!(!object.exists(), "the replay exported again");
    // The same request spelled with other white space and key order is the same request.
    std::fs::write(
        env.path().join("req2.json"),
        r#"{"exportParams": {"outputType": "METADATA_AND_DATA", "objectName": "once.sdx",
            "bucketName": "bkt", "baseInstantSnapshot": "s1"}}"#,
    )
    .unwrap();
    let (respelled, _) =
        env.request_raw("s2", &env.path().join("req2.json"), &["--request-id", ID]);
    assert_eq!(respelled, first);
    // Another request under the same id is refused, and writes nothing.
    let (other, rc) = env.request("s2", &params("twice.sdx"), &["--request-id", ID]);
    assert_eq!(rc, 1);
    assert_eq!(
        error_of(&other),
        ("REQUEST_ID_CONFLICT".to_string(), "requestId".to_string())
    );
    assert!(!env.path().join("buckets/bkt/twice.sdx").exists());
    // So is the same body on another target.
    let (other_target, rc) = env.request("s3", &params("once.sdx"), &["--request-id", ID]);
    assert_eq!(rc, 1);
    assert_eq!(error_of(&other_target).0, "REQUEST_ID_CONFLICT");
    // A failed request is recorded too: its retry gets the same failure.
    let id2 = "9b2e4f60-1c3d-4e5f-8a7b-6c5d4e3f2a1b";
    let (failed, rc) = env.request("s2", &params("../x"), &["--request-id", id2]);
    assert_eq!(rc, 1);
    let (failed_again, _) = env.request("s2", &params("../x"), &["--request-id", id2]);
    assert_eq!(failed_again, failed);
    // The records live in the state directory, private.
    let state = env.path().join("buckets/.snapdelta-requests");
    let mode = std::fs::metadata(state.join(format!("{ID}.json")))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    validate(&[first, other, failed]);
}

/// A requestId is a UUID, whatever the case of its hexadecimal digits:
/// both spellings are one request, recorded once under the lower-case
/// form, and each answer echoes the id as its request spelt it.
#[test]
fn a_request_id_in_upper_case_is_the_same_request_and_echoed_as_sent() {
    let env = Env::new();
    let upper = ID.to_uppercase();
    let (first, rc) = env.request("s2", &params("once.sdx"), &["--request-id", &upper]);
    assert_eq!(rc, 0, "{first}");
    assert_eq!(first["clientOperationId"], upper.as_str());
    let state = env.path().join("buckets/.snapdelta-requests");
    assert!(state.join(format!("{ID}.json")).is_file());
    // The lower-case spelling replays it without exporting again, and
    // answers with its own spelling.
    let object = env.path().join("buckets/bkt/once.sdx");
    std::fs::remove_file(&object).unwrap();
    let (lower, rc) = env.request("s2", &params("once.sdx"), &["--request-id", ID]);
    assert_eq!(rc, 0);
    assert_eq!(lower["clientOperationId"], ID);
    assert_eq!(lower["id"], first["id"]);
    assert_eq!(
        lower.clone().tap(|v| v["clientOperationId"] = json!(upper)),
        first
    );
    assert!(!object.exists(), "the replay exported again");
    // A mixed spelling is the same id too: a conflict, echoed as sent.
    let mixed = format!("{}{}", &upper[..18], &ID[18..]);
    let (other, rc) = env.request("s2", &params("twice.sdx"), &["--request-id", &mixed]);
    assert_eq!(rc, 1);
    assert_eq!(error_of(&other).0, "REQUEST_ID_CONFLICT");
    assert_eq!(other["clientOperationId"], mixed.as_str());
    let records: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".json"))
        .collect();
    assert_eq!(records, [format!("{ID}.json")]);
    validate(&[first, lower, other]);
}

#[test]
fn two_processes_with_one_request_id_export_once() {
    let env = Env::new();
    // A larger target, so that the two processes overlap.
    let big = env.snap("s4", "d1", "2026-12-04T10:00:00Z", None);
    for i in 0..64u64 {
        fill(&big, i * (1 << 20), 1 << 20, i as u8 + 1);
    }
    std::fs::write(env.path().join("req.json"), params("big.sdx").to_string()).unwrap();
    let state = env.path().join("state");
    let spawn = || {
        Command::new(bin())
            .args([
                "export",
                "--request",
                "req.json",
                "--snapshots",
                "snaps",
                "--buckets",
                "buckets",
                "--state-dir",
                state.to_str().unwrap(),
                "--request-id",
                ID,
                "s4",
            ])
            .current_dir(env.path())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success() && b.status.success());
    let a: Value = serde_json::from_slice(&a.stdout).unwrap();
    let b: Value = serde_json::from_slice(&b.stdout).unwrap();
    // One export: both answers are the one Operation it made.
    assert_eq!(a["id"], b["id"]);
    assert_eq!(a, b);
    assert!(state.join(format!("{ID}.json")).is_file());
    assert!(!env.path().join("buckets/.snapdelta-requests").exists());
}

#[test]
fn a_protected_snapshot_exports_encrypted_and_reads_back_only_with_its_key() {
    let env = Env::new();
    let s6 = env.snap("s6", "d7", "2026-12-01T10:00:00Z", Some(KEY_SHA256));
    fill(&s6, 0, 65536, 5);
    let s7 = env.snap("s7", "d7", "2026-12-02T10:00:00Z", Some(KEY_SHA256));
    fill(&s7, 0, 65536, 5);
    // Two changed blocks apart, of a pattern easy to look for.
    fill(&s7, 4096, 4096, b'P');
    fill(&s7, 16384, 4096, b'Q');
    let body = json!({"exportParams": {"baseInstantSnapshot": "s6", "bucketName": "bkt",
        "objectName": "sealed.sdx", "outputType": "METADATA_AND_DATA",
        "encryptionKey": {"rawKey": KEY}}});
    let (answer, rc) = env.request("s7", &body, &[]);
    assert_eq!(rc, 0, "{answer}");
    assert_eq!(answer["snapdeltaExport"]["encryptionKeySha256"], KEY_SHA256);
    assert!(
        !answer.to_string().contains(KEY),
        "the key is in the answer"
    );
    validate(std::slice::from_ref(&answer));
    let object = env.path().join("buckets/bkt/sealed.sdx");
    let bytes = std::fs::read(&object).unwrap();
    assert!(
        !bytes.windows(64).any(|w| w == [b'P'; 64]),
        "plaintext stored"
    );
    std::fs::write(env.path().join("key"), format!("{KEY}\n")).unwrap();
    std::fs::write(env.path().join("other-key"), OTHER_KEY).unwrap();
    let obj = object.to_str().unwrap();

    // info and apply with the key.
    let out = ok(env.path(), &["info", "--json", "--key-file", "key", obj]);
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["encryption_key_sha256"], KEY_SHA256);
    assert_eq!(info["data_extents"], 2);
    ok(
        env.path(),
        &[
            "apply",
            "--base",
            "snaps/s6.img",
            obj,
            "-o",
            "r.img",
            "--key-file",
            "key",
        ],
    );
    assert_eq!(
        std::fs::read(env.path().join("r.img")).unwrap(),
        std::fs::read(&s7).unwrap()
    );

    // Without the key, or with another, nothing is written.
    let no_key = run(
        env.path(),
        &["apply", "--base", "snaps/s6.img", obj, "-o", "n.img"],
    );
    assert!(!no_key.status.success());
    assert!(String::from_utf8_lossy(&no_key.stderr).contains(KEY_SHA256));
    let err = fails(
        env.path(),
        &[
            "apply",
            "--base",
            "snaps/s6.img",
            obj,
            "-o",
            "n.img",
            "--key-file",
            "other-key",
        ],
    );
    assert!(err.contains("key"), "{err}");
    assert!(!env.path().join("n.img").exists());
    assert!(!run(env.path(), &["info", obj]).status.success());
    fails(env.path(), &["info", "--key-file", "other-key", obj]);

    // Tampering: every change is refused and leaves no output.
    let (head, rec) = (128 + 64, 40 + 4096 + 16);
    let mut flipped = bytes.clone();
    flipped[head + 40 + 100] ^= 1;
    let mut swapped = bytes.clone();
    swapped[head..head + 2 * rec].rotate_left(rec);
    let mut tag_flipped = bytes.clone();
    *tag_flipped.last_mut().unwrap() ^= 0x80;
    let truncated = bytes[..bytes.len() - 16].to_vec();
    let mut offset_changed = bytes.clone();
    // The second record's offset moved by one block, its CRC fixed up:
    // only the seal can tell.
    let r2 = head + rec;
    let off = u64::from_le_bytes(offset_changed[r2 + 8..r2 + 16].try_into().unwrap()) + 4096;
    offset_changed[r2 + 8..r2 + 16].copy_from_slice(&off.to_le_bytes());
    let crc = crc32c(&offset_changed[r2..r2 + 36]);
    offset_changed[r2 + 36..r2 + 40].copy_from_slice(&crc.to_le_bytes());
    for (what, data) in [
        ("a flipped ciphertext byte", flipped),
        ("swapped records", swapped),
        ("a flipped end tag", tag_flipped),
        ("a truncated stream", truncated),
        ("a moved record", offset_changed),
    ] {
        std::fs::write(env.path().join("t.sdx"), &data).unwrap();
        let err = fails(
            env.path(),
            &[
                "apply",
                "--base",
                "snaps/s6.img",
                "t.sdx",
                "-o",
                "t.img",
                "--key-file",
                "key",
            ],
        );
        assert!(err.contains("corrupt"), "{what}: {err}");
        assert!(!env.path().join("t.img").exists(), "{what}");
        fails(env.path(), &["info", "--key-file", "key", "t.sdx"]);
    }
}

/// CRC-32C (Castagnoli), bit by bit.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn the_plain_export_encrypts_with_a_key_file_and_refuses_types_that_cannot() {
    let env = Env::new();
    std::fs::write(env.path().join("key"), KEY).unwrap();
    ok(
        env.path(),
        &[
            "export",
            "--base",
            "snaps/s1.img",
            "snaps/s2.img",
            "-o",
            "e.sdx",
            "--key-file",
            "key",
        ],
    );
    ok(
        env.path(),
        &[
            "apply",
            "--base",
            "snaps/s1.img",
            "e.sdx",
            "-o",
            "e.img",
            "--key-file",
            "key",
        ],
    );
    assert_eq!(
        std::fs::read(env.path().join("e.img")).unwrap(),
        std::fs::read(env.path().join("snaps/s2.img")).unwrap()
    );
    // Many records in one piece (sealed in parallel), compressed, and a
    // zero extent: the indexes and the compressed payloads still open.
    let big_base = env.path().join("big-base.img");
    let big = env.path().join("big.img");
    fill(&big_base, 0, 5 << 20, 0x44);
    for i in 0..(3u64 << 8) {
        fill(&big, i * 4096, 4096, (i % 251) as u8 + 1);
    }
    fill(&big, 3 << 20, 1 << 20, 0);
    fill(&big, 4 << 20, 1 << 20, 0x44);
    for compress in [&[][..], &["--compress", "zstd"][..]] {
        let mut args = vec![
            "export",
            "--base",
            "big-base.img",
            "big.img",
            "-o",
            "big.sdx",
            "--force",
            "--key-file",
            "key",
        ];
        args.extend(compress);
        ok(env.path(), &args);
        ok(
            env.path(),
            &[
                "apply",
                "--base",
                "big-base.img",
                "big.sdx",
                "-o",
                "big-r.img",
                "--force",
                "--key-file",
                "key",
            ],
        );
        assert_eq!(
            std::fs::read(env.path().join("big-r.img")).unwrap(),
            std::fs::read(&big).unwrap()
        );
    }
    let (info, _) = {
        let out = ok(
            env.path(),
            &["info", "--json", "--key-file", "key", "big.sdx"],
        );
        (serde_json::from_slice::<Value>(&out.stdout).unwrap(), ())
    };
    assert_eq!(info["zero_extents"], 1);
    assert_eq!(info["encryption_key_sha256"], KEY_SHA256);
    // METADATA_ONLY is sealed too.
    ok(
        env.path(),
        &[
            "export",
            "--base",
            "big-base.img",
            "big.img",
            "-o",
            "big.map",
            "--output-type",
            "metadata-only",
            "--key-file",
            "key",
        ],
    );
    assert!(!run(env.path(), &["info", "big.map"]).status.success());
    ok(env.path(), &["info", "--key-file", "key", "big.map"]);
    for ty in ["raw-sparse", "qcow2", "rbd-diff"] {
        let out = run(
            env.path(),
            &[
                "export",
                "--base",
                "snaps/s1.img",
                "snaps/s2.img",
                "-o",
                "x.out",
                "--output-type",
                ty,
                "--key-file",
                "key",
            ],
        );
        assert_eq!(out.status.code(), Some(2), "{ty}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("invalid key"),
            "{ty}"
        );
        assert!(!env.path().join("x.out").exists());
    }
    // A key file that holds no key.
    std::fs::write(env.path().join("bad-key"), "short").unwrap();
    let out = run(
        env.path(),
        &[
            "export",
            "snaps/s2.img",
            "-o",
            "y.sdx",
            "--key-file",
            "bad-key",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(!env.path().join("y.sdx").exists());
}

#[test]
fn a_service_unwraps_wrapped_keys_through_the_library_trait() {
    use snapdelta::request::{export_request, RequestContext};
    use snapdelta::{CustomerKey, KeyUnwrapper};
    struct Xor;
    impl KeyUnwrapper for Xor {
        fn unwrap_rsa(&self, wrapped: &[u8]) -> Result<CustomerKey, String> {
            let bytes: [u8; 32] = wrapped
                .iter()
                .map(|b| b ^ 0xFF)
                .collect::<Vec<_>>()
                .try_into()
                .map_err(|_| "not a wrapped 256-bit key".to_string())?;
            Ok(CustomerKey::from_bytes(bytes))
        }
        fn unwrap_kms(&self, name: &str, _: Option<&str>) -> Result<CustomerKey, String> {
            Err(format!("no key {name}"))
        }
    }
    let env = Env::new();
    let s6 = env.snap("s6", "d7", "2026-12-01T10:00:00Z", Some(KEY_SHA256));
    fill(&s6, 0, 65536, 5);
    let s7 = env.snap("s7", "d7", "2026-12-02T10:00:00Z", Some(KEY_SHA256));
    fill(&s7, 0, 65536, 6);
    // KEY's bytes are 0..32; wrapped: each XOR 0xFF, in base64.
    let wrapped = "//79/Pv6+fj39vX08/Lx8O/u7ezr6uno5+bl5OPi4eA=";
    let snaps = env.path().join("snaps");
    let buckets = env.path().join("buckets");
    let ctx = RequestContext {
        snapshots: &snaps,
        buckets: &buckets,
        state_dir: None,
        unwrapper: Some(&Xor),
    };
    let body = json!({"exportParams": {"baseInstantSnapshot": "s6", "bucketName": "bkt",
        "objectName": "w.sdx", "outputType": "METADATA_AND_DATA",
        "encryptionKey": {"rsaEncryptedKey": wrapped}}});
    let mut seen = Vec::new();
    let op = export_request(&ctx, "s7", None, body.to_string().as_bytes(), &mut |op| {
        seen.push(op.progress)
    });
    assert!(op.error.is_none(), "{op:?}");
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert_eq!(seen.last(), Some(&100));
    assert_eq!(
        op.snapdelta_export
            .unwrap()
            .encryption_key_sha256
            .as_deref(),
        Some(KEY_SHA256)
    );
    let kms = json!({"exportParams": {"baseInstantSnapshot": "s6", "bucketName": "bkt",
        "objectName": "k.sdx", "outputType": "METADATA_AND_DATA",
        "encryptionKey": {"kmsKeyName": "keys/k1"}}});
    let op = export_request(&ctx, "s7", None, kms.to_string().as_bytes(), &mut |_| {});
    let e = &op.error.unwrap().errors[0];
    assert_eq!(
        (e.code.as_str(), e.location.as_str()),
        (
            "INVALID_FIELD_VALUE",
            "exportParams.encryptionKey.kmsKeyName"
        )
    );
    assert!(!buckets.join("bkt/k.sdx").exists());
}
