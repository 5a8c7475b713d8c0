//! Spend budgets kept in the pod (`scope = "local"`, the default): a client's
//! `budget_usd_per_day` stops it within one request of its limit, with OpenAI's
//! `insufficient_quota` 429; what it spent shows at the admin listener's `/budgets` and in
//! `ringgate_client_spend_usd`; a reload keeps the spend. (Across replicas, on Redis:
//! tests/cluster.rs.)

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::gateway::{request, temp_dir, Driver, Gateway, Response};
use ringgate_mock::MockProvider;
use sha2::{Digest, Sha256};

fn sha_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn config(mock: &MockProvider, keys: &Path, budgets: &str) -> String {
    format!(
        r#"
[server]
listen = "{{listen}}"
workers = 2

[admin]
listen = "{{admin}}"

[upstreams.mock]
url = "http://{mock}/v1"

[models."gpt-4.1"]
upstream = "mock"
prompt_usd_per_mtok = 1000.0
completion_usd_per_mtok = 1000.0

[auth]
keys_file = "{keys}/keys"
{budgets}

[[routes]]
name = "chat"
prefix = "/v1/chat/completions"
rewrite = "/chat/completions"
route_by_model = true

[[routes]]
name = "other"
prefix = "/v1/"
upstream = "mock"
"#,
        mock = mock.addr(),
        keys = keys.display()
    )
}

fn chat(addr: SocketAddr, key: &str, stream: bool) -> Response {
    let body = format!(
        r#"{{"model":"gpt-4.1","max_tokens":10,"stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
    );
    request(
        addr,
        &format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {key}\r\n\
             x-mock-chunks: 10\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .expect("chat answered")
}

/// Sends `n` streamed chats for `key`; returns how many were admitted and the last refusal.
fn spend_down(addr: SocketAddr, key: &str, n: usize) -> (usize, Option<Response>) {
    let mut ok = 0;
    let mut refusal = None;
    for _ in 0..n {
        let r = chat(addr, key, true);
        match r.status {
            200 => ok += 1,
            429 => refusal = Some(r),
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    (ok, refusal)
}

#[test]
fn a_local_spend_budget_stops_its_client_within_one_request() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let keys = temp_dir("spend-keys");
    std::fs::write(
        keys.join("keys"),
        format!(
            "team-a {}\nteam-b {}\n",
            sha_hex("sk-team-a"),
            sha_hex("sk-team-b")
        ),
    )
    .expect("keys");
    let budgets = "budget_usd_per_day = 0.2\n[auth.clients.team-b]\nbudget_usd_per_month = 0.05";
    let gw = Gateway::start(&config(&mock, &keys, budgets), Driver::IoUring);
    let first = chat(gw.addr, "sk-team-a", false);
    assert_eq!(first.status, 200, "{}", first.text());
    let used = first.json()["usage"]["total_tokens"]
        .as_u64()
        .expect("usage");
    let cost = used as f64 * 1e-3;
    let (ok, refusal) = spend_down(gw.addr, "sk-team-a", 20);
    let admitted = ok + 1;
    // Admitted while what was spent is below the budget: ceil(budget / cost).
    let want = (0.2 / cost).ceil() as usize;
    eprintln!(
        "local spend budget: admitted {admitted} at ${cost:.3} each, the budget admits {want}"
    );
    assert!(
        admitted.abs_diff(want) <= 1,
        "admitted {admitted}, want {want}"
    );
    let r = refusal.expect("refused once spent");
    assert_eq!(
        r.json()["error"]["type"],
        "insufficient_quota",
        "{}",
        r.text()
    );
    assert_eq!(r.json()["error"]["code"], "insufficient_quota");
    assert!(r.header("retry-after").is_some());
    // Other routes of the client are refused too (no usage read there, only the check).
    let r = request(
        gw.addr,
        "GET /v1/echo HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer sk-team-a\r\nconnection: close\r\n\r\n",
    )
    .expect("other route");
    assert_eq!(r.status, 429, "{}", r.text());
    // Each client has its own budget: team-b's monthly one (team-a's daily one applies to
    // it too, as the default).
    let (ok_b, _) = spend_down(gw.addr, "sk-team-b", 10);
    let want_b = (0.05 / cost).ceil() as usize;
    assert!(
        ok_b.abs_diff(want_b) <= 1,
        "team-b admitted {ok_b}, want {want_b}"
    );
    // The admin listener and the metrics show what each spent, settled at its real cost.
    let b = gw.admin_get("/budgets").json();
    let rows = b["budgets"].as_array().expect("rows").clone();
    let row = |client: &str, window: &str| {
        rows.iter()
            .find(|r| r["client"] == client && r["window"] == window)
            .unwrap_or_else(|| panic!("no {client}/{window} in {b}"))
            .clone()
    };
    let a_day = row("team-a", "day");
    assert_eq!(a_day["scope"], "local");
    assert_eq!(a_day["budget_usd"], 0.2);
    let spent = a_day["spent_usd"].as_f64().expect("spent");
    assert!(
        (spent - admitted as f64 * cost).abs() < 1e-6,
        "{spent} spent for {admitted} requests"
    );
    assert_eq!(a_day["remaining_usd"], 0.0);
    assert!(a_day["resets_at"]
        .as_str()
        .unwrap_or("")
        .ends_with("T00:00:00.000Z"));
    let b_month = row("team-b", "month");
    assert_eq!(b_month["budget_usd"], 0.05);
    assert!(b_month["resets_at"]
        .as_str()
        .unwrap_or("")
        .ends_with("-01T00:00:00.000Z"));
    let gauge = gw
        .metric("ringgate_client_spend_usd{client=\"team-a\",window=\"day\"}")
        .expect("gauge");
    assert!((gauge - spent).abs() < 1e-9);
    assert_eq!(
        gw.metric("ringgate_client_budget_usd{client=\"team-b\",window=\"month\"}"),
        Some(0.05)
    );
    let text = gw.admin_get("/metrics").text();
    if let Some((ok, msg)) = common::gateway::promtool_check_metrics(&text) {
        assert!(ok && msg.trim().is_empty(), "promtool:\n{msg}");
    }
    // A reload that raises the budget keeps what was spent: only the difference is left.
    let raised = budgets.replace("budget_usd_per_day = 0.2", "budget_usd_per_day = 0.3");
    assert!(gw.project(&config(&mock, &keys, &raised)));
    let start = std::time::Instant::now();
    while gw.metric("ringgate_client_budget_usd{client=\"team-a\",window=\"day\"}") != Some(0.3) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "reload never applied"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (more, _) = spend_down(gw.addr, "sk-team-a", 20);
    let want_more = ((0.3 - spent) / cost).ceil() as usize;
    assert!(
        more.abs_diff(want_more) <= 1,
        "after the reload {more} more admitted, want {want_more}"
    );
    let _ = std::fs::remove_dir_all(keys);
}

#[test]
fn budget_keys_are_validated_with_their_paths() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let keys = temp_dir("spend-keys-bad");
    std::fs::write(keys.join("keys"), format!("team-a {}\n", sha_hex("k"))).expect("keys");
    let cfg = config(
        &mock,
        &keys,
        "budget_usd_per_day = -1\n[auth.clients.team-a]\nbudget_usd_per_month = 1e300",
    )
    .replace("{listen}", "127.0.0.1:0")
    .replace("{admin}", "127.0.0.1:0");
    let file = keys.join("gateway.toml");
    std::fs::write(&file, cfg).expect("config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .arg("check")
        .arg(&file)
        .output()
        .expect("ringgate check runs");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("auth.budget_usd_per_day"), "{text}");
    assert!(
        text.contains("auth.clients.team-a.budget_usd_per_month"),
        "{text}"
    );
    // A budget no price can spend would never stop anyone: refused too.
    let unpriced = config(&mock, &keys, "budget_usd_per_day = 5")
        .replace(
            "prompt_usd_per_mtok = 1000.0\ncompletion_usd_per_mtok = 1000.0\n",
            "",
        )
        .replace("{listen}", "127.0.0.1:0")
        .replace("{admin}", "127.0.0.1:0");
    std::fs::write(&file, unpriced).expect("config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .arg("check")
        .arg(&file)
        .output()
        .expect("ringgate check runs");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("auth.budget_usd_per_day") && text.contains("need prices"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(keys);
}

/// A model whose fallback is pricier: the reservation covers the priciest model that may
/// answer. Reserved at the first model's prices, concurrent requests that all fell back
/// were each admitted against a near-zero estimate and together ran far past the budget.
#[test]
fn concurrent_requests_falling_back_to_a_pricier_model_stop_at_the_budget() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let keys = temp_dir("spend-fallback-keys");
    std::fs::write(
        keys.join("keys"),
        format!("team-a {}\n", sha_hex("sk-team-a")),
    )
    .expect("keys");
    let cfg = format!(
        r#"
[server]
listen = "{{listen}}"
workers = 1

[admin]
listen = "{{admin}}"

[upstreams.mock]
url = "http://{mock}/v1"
max_fails = 0

[models.cheap]
upstream = "mock"
prompt_usd_per_mtok = 1.0
completion_usd_per_mtok = 1.0
fallbacks = ["pricey"]

[models.pricey]
upstream = "mock"
prompt_usd_per_mtok = 1000.0
completion_usd_per_mtok = 1000.0

[auth]
keys_file = "{keys}/keys"
budget_usd_per_day = 1.0

[[routes]]
name = "chat"
prefix = "/v1/chat/completions"
rewrite = "/chat/completions"
route_by_model = true
retry_on = ["http_503"]
tries = 1
"#,
        mock = mock.addr(),
        keys = keys.display()
    );
    let gw = Gateway::start(&cfg, Driver::IoUring);
    // Each request's first attempt (the cheap model) fails with a 503; its fallback answers.
    // max_tokens 1000 at $1000/Mtok: the pricey estimate alone is over the $1 budget.
    let send = move |addr: SocketAddr, n: usize, gate: bool| {
        let body = r#"{"model":"cheap","max_tokens":1000,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
        let gate = if gate { "x-mock-gate: 1\r\n" } else { "" };
        request(
            addr,
            &format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer sk-team-a\r\n\
                 x-mock-status: 503\r\nx-mock-fail-first: 1\r\nx-mock-fail-key: r{n}\r\n{gate}\
                 content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
        .expect("answered")
    };
    let addr = gw.addr;
    let held = std::thread::spawn(move || send(addr, 0, true));
    // The first request reached its fallback, which holds its stream open.
    assert!(
        common::gateway::wait_until(std::time::Duration::from_secs(10), || mock.request_count()
            >= 2),
        "the first request reached its fallback"
    );
    let second = send(gw.addr, 1, false);
    mock.release_gate();
    let first = held.join().expect("first request");
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(
        second.status,
        429,
        "the running request's reservation already covers the budget: {}",
        second.text()
    );
    assert_eq!(second.json()["error"]["type"], "insufficient_quota");
}

/// A client that leaves while the provider works on its request: the provider read the
/// prompt (and may bill the whole answer), so the request is charged its prompt estimate,
/// not refunded — else sending expensive requests and hanging up just before each answer
/// spends the provider's money with the budget untouched.
#[test]
fn a_client_that_leaves_before_its_answer_is_charged_its_prompt() {
    let mock = MockProvider::start("127.0.0.1:0").expect("mock");
    let keys = temp_dir("spend-leave-keys");
    std::fs::write(
        keys.join("keys"),
        format!("team-a {}\n", sha_hex("sk-team-a")),
    )
    .expect("keys");
    let gw = Gateway::start(
        &config(
            &mock,
            &keys,
            "budget_usd_per_day = 100.0\ntokens_per_minute = 10",
        ),
        Driver::IoUring,
    );
    let body = r#"{"model":"gpt-4.1","max_tokens":100000,"messages":[{"role":"user","content":"a long and expensive question"}]}"#;
    let mut s = std::net::TcpStream::connect(gw.addr).expect("connect");
    std::io::Write::write_all(
        &mut s,
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer sk-team-a\r\n\
             x-mock-delay-ms: 10000\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .expect("send");
    assert!(
        common::gateway::wait_until(std::time::Duration::from_secs(10), || mock.request_count()
            >= 1),
        "the provider got the request"
    );
    drop(s);
    // $1000 per million prompt tokens, 4 bytes a token.
    let want = (body.len() as f64 / 4.0).ceil() * 1e-3;
    let spent = || {
        gw.admin_get("/budgets").json()["budgets"][0]["spent_usd"]
            .as_f64()
            .unwrap_or(-1.0)
    };
    // While the request runs its whole estimate is reserved; once the gateway saw the
    // client leave, what stays is the prompt.
    assert!(
        common::gateway::wait_until(std::time::Duration::from_secs(10), || (spent() - want)
            .abs()
            < 1e-6),
        "spent {} after the client left, want its prompt's ${want}:\n{}",
        spent(),
        gw.logs()
    );
    // Its local token budget (10 a minute) was charged the prompt's 28 tokens too.
    let r = chat(gw.addr, "sk-team-a", false);
    assert_eq!(r.status, 429, "{}", r.text());
    assert_ne!(
        r.json()["error"]["type"],
        "insufficient_quota",
        "{}",
        r.text()
    );
}

/// The same once the answer started: a client that hangs up after the first bytes of a JSON
/// answer, before the usage at its end, is charged the prompt estimate (the provider's
/// usage never arrived, so a full refund made the answer it read free).
#[test]
fn a_client_that_leaves_before_the_usage_of_its_answer_is_charged_its_prompt() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let upstream = listener.local_addr().expect("addr");
    let provider = std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(10)));
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.ends_with(b"}]}") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        // The choices, then nothing until the gateway hangs up: the usage never comes.
        let _ = s.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 400\r\n\r\n\
              {\"id\":\"x\",\"object\":\"chat.completion\",\"choices\":[{\"index\":0,\"message\":\
              {\"role\":\"assistant\",\"content\":\"the whole answer\"}",
        );
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    });
    let keys = temp_dir("spend-leave-body-keys");
    std::fs::write(
        keys.join("keys"),
        format!("team-a {}\n", sha_hex("sk-team-a")),
    )
    .expect("keys");
    let cfg = format!(
        r#"
[server]
listen = "{{listen}}"
workers = 1

[admin]
listen = "{{admin}}"

[upstreams.raw]
url = "http://{upstream}/v1"
max_fails = 0

[models."gpt-4.1"]
upstream = "raw"
prompt_usd_per_mtok = 1000.0
completion_usd_per_mtok = 1000.0

[auth]
keys_file = "{keys}/keys"
budget_usd_per_day = 100.0

[[routes]]
name = "chat"
prefix = "/v1/chat/completions"
rewrite = "/chat/completions"
route_by_model = true
read_timeout_ms = 10000
"#,
        keys = keys.display()
    );
    let gw = Gateway::start(&cfg, Driver::IoUring);
    let body = r#"{"model":"gpt-4.1","max_tokens":100000,"messages":[{"role":"user","content":"an expensive question"}]}"#;
    let mut s = std::net::TcpStream::connect(gw.addr).expect("connect");
    s.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer sk-team-a\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .expect("send");
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("the whole answer") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => panic!("no answer: {}", String::from_utf8_lossy(&got)),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    drop(s);
    let want = (body.len() as f64 / 4.0).ceil() * 1e-3;
    let spent = || {
        gw.admin_get("/budgets").json()["budgets"][0]["spent_usd"]
            .as_f64()
            .unwrap_or(-1.0)
    };
    assert!(
        common::gateway::wait_until(std::time::Duration::from_secs(10), || (spent() - want)
            .abs()
            < 1e-6),
        "spent {} after the client left, want its prompt's ${want}:\n{}",
        spent(),
        gw.logs()
    );
    provider.join().expect("provider");
}
