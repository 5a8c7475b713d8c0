//! The official `openai` Python SDK, pointed at the gateway with `base_url`, completes a chat
//! request, a streamed one and a model listing through it. `.ci/run` installs the package.

mod common;

use std::process::Command;

use common::gateway::{Driver, Gateway};
use ringgate_mock::MockProvider;

#[test]
fn openai_python_sdk_chats_and_streams_through_the_gateway() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let config = format!(
        "[server]\nlisten = \"{{listen}}\"\nworkers = 2\n[admin]\nlisten = \"{{admin}}\"\n\
         [upstreams.mock]\nurl = \"http://{}/v1\"\n\
         [[routes]]\nname = \"chat\"\nprefix = \"/v1/chat/completions\"\nrewrite = \"/chat/completions\"\nupstream = \"mock\"\n\
         [[routes]]\nname = \"fallback\"\nprefix = \"/v1/\"\nrewrite = \"/\"\nupstream = \"mock\"\n",
        mock.addr()
    );
    let gw = Gateway::start(&config, Driver::IoUring);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_client.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(format!("http://{}/v1", gw.addr))
        .output()
        .expect("python3 runs (install the SDK with `pip install openai`)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "openai SDK failed:\n{stderr}\ngateway log:\n{}",
        gw.logs()
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json line");
    assert!(
        seen["chat_content"].as_str().is_some_and(|s| !s.is_empty()),
        "{seen}"
    );
    assert_eq!(seen["chat_model"], "gpt-4.1");
    assert!(
        seen["stream_pieces"].as_u64().unwrap_or(0) >= 2,
        "streamed in several pieces: {seen}"
    );
    assert!(
        seen["stream_usage_total"].as_u64().is_some(),
        "usage chunk arrived: {seen}"
    );
    assert!(
        seen["models"].as_array().is_some_and(|m| !m.is_empty()),
        "{seen}"
    );
    let last = mock
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("/chat/completions"))
        .expect("chat reached the mock");
    assert_eq!(last.header("authorization"), Some("Bearer sk-test-client"));
}
