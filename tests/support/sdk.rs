//! The providers' own code, to check relayd against: under `target/provider-sdks/`, a
//! Python virtual environment (`python3 -m venv`) with the official SDKs from PyPI and a
//! Node project with those from npm, each made on first use with pinned versions, and
//! snippets run in them. A provider's SDK beats our reading of its docs: what it signs,
//! relayd must accept; what relayd signs, it must accept.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The SDKs, pinned (bump deliberately: a new version is a new check).
pub const PYTHON_PACKAGES: &[&str] = &[
    "slack-sdk==3.47.0",
    "paddle-python-sdk==1.16.1",
    "squareup==46.0.0.20260916",
    "twilio==9.13.0",
    "pynacl==1.6.2",
];

/// The npm packages, pinned.
pub const NODE_PACKAGES: &[&str] = &["@linear/sdk@98.0.0"];

/// The Node project's directory, made and provisioned once per test binary.
pub fn node_project() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        super::tools::provision();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/provider-sdks/node");
        std::fs::create_dir_all(&dir).unwrap();
        let installed = NODE_PACKAGES.iter().all(|package| {
            let (name, version) = package.rsplit_once('@').unwrap();
            std::fs::read_to_string(dir.join("node_modules").join(name).join("package.json"))
                .is_ok_and(|manifest| manifest.contains(&format!("\"version\": \"{version}\"")))
        });
        if !installed {
            run(Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
                .arg(&dir)
                .args(NODE_PACKAGES));
        }
        dir
    })
}

/// Runs `script` (an ES module) with `args` (`process.argv.slice(1)`) in the Node
/// project; its stdout, trimmed.
pub fn run_node(script: &str, args: &[&str]) -> String {
    let output = Command::new("node")
        .current_dir(node_project())
        .args(["--input-type=module", "-e", script])
        .args(args)
        .output()
        .expect("run node");
    assert!(
        output.status.success(),
        "node failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// Whether `@linear/sdk`'s `LinearWebhookClient.verify` accepts the request (it also
/// checks the body's `webhookTimestamp` against its own clock, within a minute).
pub fn linear_accepts(secret: &str, signature: &str, body: &[u8]) -> bool {
    run_node(
        "import { LinearWebhookClient } from '@linear/sdk/webhooks';\n\
         const [secret, signature, body] = process.argv.slice(1);\n\
         try { console.log(new LinearWebhookClient(secret).verify(Buffer.from(body), signature)); }\n\
         catch (e) { console.log(false); }",
        &[secret, signature, std::str::from_utf8(body).unwrap()],
    ) == "true"
}

/// The virtual environment's `python`, made and provisioned once per test binary.
pub fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        super::tools::provision();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/provider-sdks/venv");
        let python = dir.join("bin/python");
        if !python.exists() {
            run(Command::new("python3").args(["-m", "venv"]).arg(&dir));
        }
        // A no-op when the pinned versions are installed already.
        run(Command::new(&python)
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .args(PYTHON_PACKAGES));
        python
    })
}

/// Runs `script` (Python source) with `args` (`sys.argv[1:]`) in the environment; its
/// stdout, trimmed.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let output = Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run the SDK environment's python");
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

fn run(command: &mut Command) {
    let output = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `X-Slack-Signature` as `slack_sdk`'s `SignatureVerifier.generate_signature` makes it.
pub fn slack_signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    run_python(
        "import sys\n\
         from slack_sdk.signature import SignatureVerifier\n\
         print(SignatureVerifier(sys.argv[1]).generate_signature(timestamp=sys.argv[2], body=sys.argv[3]))",
        &[secret, &timestamp.to_string(), std::str::from_utf8(body).unwrap()],
    )
}

/// Whether `slack_sdk`'s `SignatureVerifier.is_valid` accepts the request (it also
/// checks the timestamp against its own clock, within five minutes).
pub fn slack_accepts(secret: &str, timestamp: &str, signature: &str, body: &[u8]) -> bool {
    run_python(
        "import sys\n\
         from slack_sdk.signature import SignatureVerifier\n\
         print(SignatureVerifier(sys.argv[1]).is_valid(body=sys.argv[4], timestamp=sys.argv[2], signature=sys.argv[3]))",
        &[secret, timestamp, signature, std::str::from_utf8(body).unwrap()],
    ) == "True"
}

/// `Paddle-Signature` as `paddle-python-sdk`'s `PaddleSignature.calculate_hmac` signs
/// `"{ts}:{body}"`.
pub fn paddle_signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let h1 = run_python(
        "import sys\n\
         from paddle_billing.Notifications.PaddleSignature import PaddleSignature\n\
         print(PaddleSignature.calculate_hmac(sys.argv[1], f'{sys.argv[2]}:{sys.argv[3]}'.encode()).hexdigest())",
        &[secret, &timestamp.to_string(), std::str::from_utf8(body).unwrap()],
    );
    format!("ts={timestamp};h1={h1}")
}

/// Whether `paddle-python-sdk`'s `Verifier().verify` accepts the request (its own clock,
/// within its default five seconds).
pub fn paddle_accepts(secret: &str, signature: &str, body: &[u8]) -> bool {
    run_python(
        "import sys\n\
         from paddle_billing.Notifications import Secret, Verifier\n\
         class Request:\n\
         \x20   def __init__(self, headers, body):\n\
         \x20       self.headers, self.body = headers, body\n\
         request = Request({'Paddle-Signature': sys.argv[2]}, sys.argv[3].encode())\n\
         try:\n\
         \x20   print(Verifier().verify(request, Secret(sys.argv[1])))\n\
         except ConnectionRefusedError:\n\
         \x20   print(False)",
        &[secret, signature, std::str::from_utf8(body).unwrap()],
    ) == "True"
}

/// Whether `squareup`'s `webhooks_helper.verify_signature` accepts the request.
pub fn square_accepts(key: &str, url: &str, signature: &str, body: &[u8]) -> bool {
    run_python(
        "import sys\n\
         from square.utils.webhooks_helper import verify_signature\n\
         print(verify_signature(request_body=sys.argv[4], signature_header=sys.argv[3], signature_key=sys.argv[1], notification_url=sys.argv[2]))",
        &[key, url, signature, std::str::from_utf8(body).unwrap()],
    ) == "True"
}

/// The Python snippet's shared part for Twilio: `params` is argv[3] parsed as a form
/// body into a multi-dict (`getall`, as Flask gives `RequestValidator`).
const TWILIO_PARAMS: &str = "import sys\n\
     from urllib.parse import parse_qsl\n\
     from twilio.request_validator import RequestValidator\n\
     class Multi(dict):\n\
     \x20   def getall(self, name): return self[name]\n\
     params = Multi()\n\
     for name, value in parse_qsl(sys.argv[3], keep_blank_values=True): params.setdefault(name, []).append(value)\n";

/// `X-Twilio-Signature` as `twilio`'s `RequestValidator.compute_signature` makes it for
/// a form body posted to `url` (with its query) under `algorithm` (`HMAC_SHA1`,
/// `HMAC_SHA256`).
pub fn twilio_signature(token: &str, url: &str, form: &[u8], algorithm: &str) -> String {
    run_python(
        &format!(
            "{TWILIO_PARAMS}print(RequestValidator(sys.argv[1]).compute_signature(sys.argv[2], params, sys.argv[4]))"
        ),
        &[token, url, std::str::from_utf8(form).unwrap(), algorithm],
    )
}

/// Whether `RequestValidator.validate` accepts a form body posted to `url`.
pub fn twilio_accepts_form(token: &str, url: &str, form: &[u8], signature: &str) -> bool {
    run_python(
        &format!(
            "{TWILIO_PARAMS}print(RequestValidator(sys.argv[1]).validate(sys.argv[2], params, sys.argv[4]))"
        ),
        &[token, url, std::str::from_utf8(form).unwrap(), signature],
    ) == "True"
}

/// Whether `RequestValidator.validate` accepts a JSON body posted to `url` (whose query
/// carries `bodySHA256`), signed with `algorithm`.
pub fn twilio_accepts_json(token: &str, url: &str, body: &[u8], signature: &str, algorithm: &str) -> bool {
    run_python(
        "import sys\n\
         from twilio.request_validator import RequestValidator\n\
         print(RequestValidator(sys.argv[1]).validate(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]))",
        &[
            token,
            url,
            std::str::from_utf8(body).unwrap(),
            signature,
            algorithm,
        ],
    ) == "True"
}

/// The signature of `url` alone as `compute_signature` makes it (a JSON body's request,
/// whose body is covered by the URL's `bodySHA256`).
pub fn twilio_url_signature(token: &str, url: &str, algorithm: &str) -> String {
    run_python(
        "import sys\n\
         from twilio.request_validator import RequestValidator\n\
         v = RequestValidator(sys.argv[1])\n\
         print(v.compute_signature(sys.argv[2], {}, sys.argv[3]))",
        &[token, url, algorithm],
    )
}

/// `RequestValidator.compute_hash` of a JSON body: its `bodySHA256`.
pub fn twilio_body_hash(body: &[u8]) -> String {
    run_python(
        "import sys\n\
         from twilio.request_validator import RequestValidator\n\
         print(RequestValidator('unused').compute_hash(sys.argv[1]))",
        &[std::str::from_utf8(body).unwrap()],
    )
}

/// A new Ed25519 key pair from PyNaCl (`nacl.signing.SigningKey.generate`), as Discord
/// signs with: its seed and its public key, hex.
pub fn nacl_key_pair() -> (String, String) {
    let out = run_python(
        "from nacl.signing import SigningKey\n\
         key = SigningKey.generate()\n\
         print(key.encode().hex(), key.verify_key.encode().hex())",
        &[],
    );
    let (seed, public) = out.split_once(' ').unwrap();
    (seed.to_string(), public.to_string())
}

/// Discord's `X-Signature-Ed25519` of `timestamp` + `body`, signed by PyNaCl.
pub fn nacl_signature(seed: &str, timestamp: &str, body: &[u8]) -> String {
    run_python(
        "import sys\n\
         from nacl.signing import SigningKey\n\
         print(SigningKey(bytes.fromhex(sys.argv[1])).sign((sys.argv[2] + sys.argv[3]).encode()).signature.hex())",
        &[seed, timestamp, std::str::from_utf8(body).unwrap()],
    )
}

/// Whether PyNaCl's `VerifyKey.verify` accepts the signature (as Discord's documentation
/// verifies interactions).
pub fn nacl_accepts(public: &str, timestamp: &str, body: &[u8], signature: &str) -> bool {
    run_python(
        "import sys\n\
         from nacl.signing import VerifyKey\n\
         from nacl.exceptions import BadSignatureError\n\
         try:\n\
         \x20   VerifyKey(bytes.fromhex(sys.argv[1])).verify((sys.argv[2] + sys.argv[3]).encode(), bytes.fromhex(sys.argv[4]))\n\
         \x20   print(True)\n\
         except BadSignatureError:\n\
         \x20   print(False)",
        &[public, timestamp, std::str::from_utf8(body).unwrap(), signature],
    ) == "True"
}
