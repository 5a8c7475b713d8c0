//! Criterion benchmarks of the OpenAI ⇄ Anthropic and OpenAI → Gemini translations: the cost per request (a
//! request body translated, an answer translated back) and per streamed event (one event
//! through a stream translator in its steady state). Run: `cargo bench --bench translate`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use ringgate::ai::anthropic::{self, inbound};
use ringgate::ai::gemini;

/// An OpenAI chat request as agents send them: a system prompt, a few turns, a tool call
/// and its result, two tools.
const OPENAI_REQUEST: &[u8] = br#"{"model":"claude","max_tokens":1024,"temperature":0.2,"stream":true,
"tools":[{"type":"function","function":{"name":"get_weather","description":"The current weather in a city","parameters":{"type":"object","properties":{"city":{"type":"string"},"unit":{"type":"string","enum":["c","f"]}},"required":["city"]}}},
 {"type":"function","function":{"name":"search","description":"Search the web","parameters":{"type":"object","properties":{"q":{"type":"string"}},"required":["q"]}}}],
"messages":[{"role":"system","content":"You are a helpful assistant. Answer briefly and cite sources when you search."},
 {"role":"user","content":"What's the weather in Paris, and anything notable happening there this week?"},
 {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\",\"unit\":\"c\"}"}}]},
 {"role":"tool","tool_call_id":"call_1","content":"21 C, sunny"},
 {"role":"user","content":"And tomorrow?"}]}"#;

/// The same conversation as an Anthropic Messages request.
const ANTHROPIC_REQUEST: &[u8] = br#"{"model":"gpt","max_tokens":1024,"temperature":0.2,"stream":true,
"system":"You are a helpful assistant. Answer briefly and cite sources when you search.",
"tools":[{"name":"get_weather","description":"The current weather in a city","input_schema":{"type":"object","properties":{"city":{"type":"string"},"unit":{"type":"string","enum":["c","f"]}},"required":["city"]}},
 {"name":"search","description":"Search the web","input_schema":{"type":"object","properties":{"q":{"type":"string"}},"required":["q"]}}],
"messages":[{"role":"user","content":"What's the weather in Paris, and anything notable happening there this week?"},
 {"role":"assistant","content":[{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"city":"Paris","unit":"c"}}]},
 {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"21 C, sunny"}]},
 {"role":"user","content":"And tomorrow?"}]}"#;

const ANTHROPIC_ANSWER: &[u8] = br#"{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Tomorrow should be similar: around 22 C and mostly sunny, with a light breeze in the afternoon."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":412,"output_tokens":28,"cache_read_input_tokens":256,"cache_creation_input_tokens":0}}"#;

const OPENAI_ANSWER: &[u8] = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Tomorrow should be similar: around 22 C and mostly sunny, with a light breeze in the afternoon."},"finish_reason":"stop"}],"usage":{"prompt_tokens":668,"completion_tokens":28,"total_tokens":696,"prompt_tokens_details":{"cached_tokens":256}}}"#;

const ANTHROPIC_START: &[u8] = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"usage\":{\"input_tokens\":412,\"output_tokens\":1}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n";
const ANTHROPIC_DELTA: &[u8] = b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" sunny\"}}\n\n";
const GEMINI_ANSWER: &[u8] = br#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Tomorrow should be similar: around 22 C and mostly sunny, with a light breeze in the afternoon."}]},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":668,"candidatesTokenCount":28,"totalTokenCount":696,"cachedContentTokenCount":256},"modelVersion":"gemini-2.5-flash","responseId":"r1"}"#;
const GEMINI_EVENT: &[u8] = b"data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \" sunny\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 668,\"totalTokenCount\": 668},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"r1\"}\r\n\r\n";
const OPENAI_DELTA: &[u8] = b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" sunny\"},\"finish_reason\":null}]}\n\n";

fn per_request(c: &mut Criterion) {
    // The floor of a translation through `serde_json::Value`: parse and write back.
    c.bench_function("translate_baseline_json_roundtrip", |b| {
        b.iter(|| {
            let v: serde_json::Value =
                serde_json::from_slice(black_box(OPENAI_REQUEST)).unwrap_or_default();
            serde_json::to_vec(&v)
        })
    });
    c.bench_function("translate_request_openai_to_anthropic", |b| {
        b.iter(|| {
            anthropic::request_to_anthropic(black_box(OPENAI_REQUEST), "claude-sonnet-4-5", 4096)
        })
    });
    c.bench_function("translate_request_anthropic_to_openai", |b| {
        b.iter(|| inbound::request_to_openai(black_box(ANTHROPIC_REQUEST), "gpt-4o-mini"))
    });
    c.bench_function("translate_answer_anthropic_to_openai", |b| {
        b.iter(|| anthropic::response_to_openai(black_box(ANTHROPIC_ANSWER), 1_700_000_000))
    });
    c.bench_function("translate_answer_openai_to_anthropic", |b| {
        b.iter(|| inbound::response_from_openai(black_box(OPENAI_ANSWER)))
    });
    c.bench_function("translate_request_openai_to_gemini", |b| {
        b.iter(|| gemini::request_to_gemini(black_box(OPENAI_REQUEST)))
    });
    c.bench_function("translate_answer_gemini_to_openai", |b| {
        b.iter(|| gemini::response_to_openai(black_box(GEMINI_ANSWER), 1_700_000_000, "gemini"))
    });
}

fn per_event(c: &mut Criterion) {
    let mut out = Vec::with_capacity(4096);
    let mut t = anthropic::StreamTranslator::new(1_700_000_000);
    t.feed(ANTHROPIC_START, &mut out);
    c.bench_function("translate_stream_event_anthropic_to_openai", |b| {
        b.iter(|| {
            out.clear();
            t.feed(black_box(ANTHROPIC_DELTA), &mut out);
        })
    });
    let mut t = inbound::ToAnthropicStream::new();
    t.feed(OPENAI_DELTA, &mut out);
    c.bench_function("translate_stream_event_openai_to_anthropic", |b| {
        b.iter(|| {
            out.clear();
            t.feed(black_box(OPENAI_DELTA), &mut out);
        })
    });
}

fn per_event_gemini(c: &mut Criterion) {
    let mut out = Vec::with_capacity(4096);
    let mut t = gemini::StreamTranslator::new(1_700_000_000, "gemini");
    t.feed(GEMINI_EVENT, &mut out);
    c.bench_function("translate_stream_event_gemini_to_openai", |b| {
        b.iter(|| {
            out.clear();
            t.feed(black_box(GEMINI_EVENT), &mut out);
        })
    });
}

criterion_group!(benches, per_request, per_event, per_event_gemini);
criterion_main!(benches);
