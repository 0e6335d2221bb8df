//! The providers' own code, to check relayd against: a Python virtual environment under
//! `target/provider-sdks/`, made on first use (`python3 -m venv`) with each provider's
//! official SDK from PyPI at a pinned version, and snippets run in it. A provider's SDK
//! beats our reading of its docs: what it signs, relayd must accept.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The SDKs, pinned (bump deliberately: a new version is a new check).
pub const PYTHON_PACKAGES: &[&str] = &[
    "slack-sdk==3.47.0",
    "paddle-python-sdk==1.16.1",
    "squareup==46.0.0.20260916",
];

/// The virtual environment's `python`, made and provisioned once per test binary.
pub fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
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
