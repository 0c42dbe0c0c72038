//! Golden fixtures per family (the exact text each model emits), fed whole,
//! char by char and in random chunkings; garbage and truncated input; and
//! random input to every parser.

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use serde_json::json;

use super::deepseek::{CALLS_BEGIN, CALLS_END, CALL_BEGIN, CALL_END, SEP};
use super::mistral::alnum9_id;
use super::*;

use ParseEvent::{Reasoning as R, Text as T};

fn call(index: usize, id: &str, name: &str, args: &str) -> Vec<ParseEvent> {
    vec![
        ParseEvent::ToolCallStart {
            index,
            id: id.into(),
            name: name.into(),
        },
        ParseEvent::ToolCallArgs {
            index,
            delta: args.into(),
        },
        ParseEvent::ToolCallEnd {
            index,
            repaired: false,
        },
    ]
}

fn t(s: &str) -> Vec<ParseEvent> {
    if s.is_empty() {
        return Vec::new();
    }
    vec![T(s.into())]
}

fn r(s: &str) -> Vec<ParseEvent> {
    vec![R(s.into())]
}

struct Fixture {
    name: &'static str,
    family: Family,
    options: ParserOptions,
    input: String,
    expected: Vec<ParseEvent>,
}

fn fixture(
    name: &'static str,
    family: Family,
    input: &str,
    expected: Vec<Vec<ParseEvent>>,
) -> Fixture {
    Fixture {
        name,
        family,
        options: ParserOptions::default(),
        input: input.into(),
        expected: expected.concat(),
    }
}

fn with(mut f: Fixture, edit: impl FnOnce(&mut ParserOptions)) -> Fixture {
    edit(&mut f.options);
    f
}

fn tool(name: &str, parameters: serde_json::Value) -> ToolSpec {
    ToolSpec {
        name: name.into(),
        parameters,
    }
}

fn fixtures() -> Vec<Fixture> {
    use Family::*;
    let weather = tool(
        "get_weather",
        json!({"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}),
    );
    vec![
        // Hermes / Qwen3 with reasoning and two calls.
        fixture(
            "qwen3",
            Hermes,
            "<think>\nThe user wants weather.\n</think>\n\nLet me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 3}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>",
            vec![
                r("The user wants weather."),
                t("Let me check."),
                call(0, "call_0", "get_weather", r#"{"city": "Paris", "days": 3}"#),
                call(1, "call_1", "get_time", "{}"),
            ],
        ),
        with(
            fixture(
                "qwen3-thinking-opened-by-template",
                Hermes,
                "The sum is simple: 2+2.\n</think>\n\n2 + 2 = 4.",
                vec![r("The sum is simple: 2+2."), t("2 + 2 = 4.")],
            ),
            |o| o.starts_in_reasoning = true,
        ),
        fixture(
            "hermes-arguments-as-string",
            Hermes,
            "<tool_call>\n{\"name\": \"f\", \"arguments\": \"{\\\"a\\\": 1}\"}\n</tool_call>",
            vec![call(0, "call_0", "f", r#"{"a": 1}"#)],
        ),
        with(
            fixture(
                "qwen3-coder",
                Qwen3Coder,
                "I'll write it.\n<tool_call>\n<function=write_file>\n<parameter=path>\nsrc/main.rs\n</parameter>\n<parameter=content>\nfn main() {\n    println!(\"<hi>\");\n}\n</parameter>\n<parameter=mode>\n420\n</parameter>\n</function>\n</tool_call>",
                vec![
                    t("I'll write it."),
                    call(
                        0,
                        "call_0",
                        "write_file",
                        r#"{"path": "src/main.rs", "content": "fn main() {\n    println!(\"<hi>\");\n}", "mode": 420}"#,
                    ),
                ],
            ),
            |o| o.id_prefix = "call_".into(),
        ),
        with(
            fixture(
                "qwen3-coder-typed-by-schema",
                Qwen3Coder,
                "<tool_call>\n<function=get_weather>\n<parameter=city>\n1984\n</parameter>\n<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>",
                vec![call(0, "c-0", "get_weather", r#"{"city": "1984", "days": 2}"#)],
            ),
            |o| {
                o.tools = vec![weather.clone()];
                o.id_prefix = "c-".into();
            },
        ),
        fixture(
            "glm-4.5",
            Glm45,
            "<think>Need the weather.</think>\nChecking.<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Beijing</arg_value>\n<arg_key>days</arg_key>\n<arg_value>2</arg_value>\n</tool_call>",
            vec![
                r("Need the weather."),
                t("Checking."),
                call(0, "call_0", "get_weather", r#"{"city": "Beijing", "days": 2}"#),
            ],
        ),
        fixture(
            "glm-4.7",
            Glm45,
            "<tool_call>search<arg_key>q</arg_key><arg_value>rust <b></arg_value><arg_key>opts</arg_key><arg_value>{\"n\": 5}</arg_value></tool_call>",
            vec![call(0, "call_0", "search", r#"{"q": "rust <b>", "opts": {"n": 5}}"#)],
        ),
        fixture(
            "gpt-oss-call",
            Harmony,
            "<|channel|>analysis<|message|>User asks for weather. Use the tool.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"location\":\"San Francisco\"}<|call|>",
            vec![
                r("User asks for weather. Use the tool."),
                call(0, "call_0", "get_weather", r#"{"location":"San Francisco"}"#),
            ],
        ),
        fixture(
            "gpt-oss-final",
            Harmony,
            "<|channel|>analysis<|message|>Simple greeting.<|end|><|start|>assistant<|channel|>final<|message|>Hello there!\nHow can I help?<|return|>",
            vec![r("Simple greeting."), t("Hello there!\nHow can I help?")],
        ),
        fixture(
            "gpt-oss-preamble-recipient-first-no-call-token",
            Harmony,
            "<|channel|>commentary<|message|>Looking it up.<|end|><|start|>assistant to=functions.lookup<|channel|>commentary json<|message|>{\"q\": \"x\"}",
            vec![t("Looking it up."), call(0, "call_0", "lookup", r#"{"q": "x"}"#)],
        ),
        fixture(
            "kimi-k2",
            KimiK2,
            "<think>plan</think>Sure.<|tool_calls_section_begin|>\n<|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{\"city\": \"Beijing\"}<|tool_call_end|>\n<|tool_call_begin|>functions.get_time:1<|tool_call_argument_begin|>{}<|tool_call_end|>\n<|tool_calls_section_end|>",
            vec![
                r("plan"),
                t("Sure."),
                call(0, "functions.get_weather:0", "get_weather", r#"{"city": "Beijing"}"#),
                call(1, "functions.get_time:1", "get_time", "{}"),
            ],
        ),
        fixture(
            "mistral-array",
            Mistral,
            "[TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}, {\"name\": \"get_time\", \"arguments\": {\"tz\": \"CET\"}, \"id\": \"Zx9Yw8Vu7\"}]",
            vec![
                call(0, &alnum9_id("call_", 0), "get_weather", r#"{"city": "Paris"}"#),
                call(1, "Zx9Yw8Vu7", "get_time", r#"{"tz": "CET"}"#),
            ],
        ),
        fixture(
            "mistral-args",
            Mistral,
            "Let me check.[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\"}[TOOL_CALLS]get_time[ARGS]{}",
            vec![
                t("Let me check."),
                call(0, &alnum9_id("call_", 0), "get_weather", r#"{"city": "Paris"}"#),
                call(1, &alnum9_id("call_", 1), "get_time", "{}"),
            ],
        ),
        fixture(
            "mistral-call-id",
            Mistral,
            "[TOOL_CALLS]get_weather[CALL_ID]a1B2c3D4e[ARGS]{\"city\": \"Paris\"}",
            vec![call(0, "a1B2c3D4e", "get_weather", r#"{"city": "Paris"}"#)],
        ),
        fixture(
            "magistral",
            Mistral,
            "[THINK]Two plus two.[/THINK]\nThe answer is 4.",
            vec![r("Two plus two."), t("The answer is 4.")],
        ),
        with(
            fixture(
                "llama3-coerced",
                Llama3Json,
                "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\", \"days\": \"3\"}}",
                vec![call(0, "call_0", "get_weather", r#"{"city": "Paris", "days": 3}"#)],
            ),
            |o| o.tools = vec![weather.clone()],
        ),
        fixture(
            "llama3-python-tag",
            Llama3Json,
            "<|python_tag|>{\"name\": \"get_time\", \"parameters\": {}}",
            vec![call(0, "call_0", "get_time", "{}")],
        ),
        fixture(
            "llama3-two-calls",
            Llama3Json,
            "\n{\"name\": \"a\", \"parameters\": {}}; {\"name\": \"b\", \"parameters\": {\"x\": [1, \"}\"]}}",
            vec![
                call(0, "call_0", "a", "{}"),
                call(1, "call_1", "b", r#"{"x": [1, "}"]}"#),
            ],
        ),
        fixture(
            "llama3-prose",
            Llama3Json,
            "Use {\"name\": \"x\", \"parameters\": {}} like that.",
            vec![t("Use {\"name\": \"x\", \"parameters\": {}} like that.")],
        ),
        fixture(
            "deepseek-r1",
            DeepSeek,
            &format!("<think>\nreason\n</think>\n\n{CALLS_BEGIN}{CALL_BEGIN}function{SEP}get_weather\n```json\n{{\"city\": \"Tokyo\"}}\n```{CALL_END}{CALLS_END}"),
            vec![
                r("reason"),
                call(0, "call_0", "get_weather", r#"{"city": "Tokyo"}"#),
            ],
        ),
        fixture(
            "deepseek-v3.1",
            DeepSeek,
            &format!("Sure.{CALLS_BEGIN}{CALL_BEGIN}get_weather{SEP}{{\"city\": \"東京\"}}{CALL_END}{CALL_BEGIN}get_time{SEP}{{}}{CALL_END}{CALLS_END}"),
            vec![
                t("Sure."),
                call(0, "call_0", "get_weather", r#"{"city": "東京"}"#),
                call(1, "call_1", "get_time", "{}"),
            ],
        ),
        fixture(
            "plain",
            Plain,
            "<think>a</think>b <tool_call>not parsed</tool_call>",
            vec![r("a"), t("b <tool_call>not parsed</tool_call>")],
        ),
    ]
}

/// Inputs no parser of the family may turn into anything but the same text.
fn garbage() -> Vec<(Family, String)> {
    use Family::*;
    let s = |f: Family, x: &str| (f, x.to_owned());
    vec![
        s(Hermes, "Hi <tool_call>{not json}</tool_call> bye"),
        s(Hermes, "Hi <tool_call>{\"name\": \"x\", \"argu"),
        s(Hermes, "<tool_call>{\"name\": \"two words\", \"arguments\": {}}</tool_call>"),
        s(Hermes, "a </think> b <tool_"),
        s(Qwen3Coder, "<tool_call>\n<function=bad name>\n</function>\n</tool_call>"),
        s(Qwen3Coder, "x\n<tool_call>\n<function=f>\n<parameter=a>\n1"),
        s(Glm45, "<tool_call>get_weather\n<arg_value>x</arg_value></tool_call>"),
        s(Glm45, "<tool_call>get_weather\n<arg_key>city</arg_k"),
        s(Harmony, "<|channel|>commentary to=functions.f<|message|>{bad<|call|>"),
        s(Harmony, "just text\nwith lines <|constrain|> and <|message|>"),
        s(Harmony, "<|channel|>analysis"),
        s(KimiK2, "<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0<|tool_call_argument_begin|>{oops<|tool_call_end|><|tool_calls_section_end|>"),
        s(KimiK2, "ok <|tool_calls_section_begin|><|tool_call_begin|>functions.f:0<|tool_call_argument_begin|>{\"a\""),
        s(Mistral, "[TOOL_CALLS] not a call"),
        s(Mistral, "[TOOL_CALLS]f[ARGS]{\"a\": "),
        s(Mistral, "[TOOL_CALLS] [1, 2]"),
        s(Mistral, "[TOOL_CALLS]f[ARGZ]{}"),
        s(Llama3Json, "{\"answer\": 42}"),
        s(Llama3Json, "{\"name\": \"f\", \"param"),
        s(Llama3Json, "<|python_tag|>brave_search.call(query=\"x\")"),
        s(DeepSeek, &format!("{CALLS_BEGIN}{CALL_BEGIN}function{SEP}f\n```json\n{{bad}}\n```{CALL_END}{CALLS_END}")),
        s(DeepSeek, &format!("x {CALLS_BEGIN}{CALL_BEGIN}f{SEP}{{}}")),
        s(Plain, "</think> <think"),
    ]
}

fn run_chunks(family: Family, options: &ParserOptions, chunks: &[&str]) -> Vec<ParseEvent> {
    let mut p = family.parser(options.clone());
    let mut events = Vec::new();
    for c in chunks {
        events.extend(p.feed(c));
    }
    events.extend(p.finish());
    merge_events(events)
}

/// Cuts `s` at the given (byte) sizes, moved forward to char boundaries.
fn chunk<'a>(s: &'a str, sizes: &[usize]) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut at = 0;
    for &n in sizes {
        if at >= s.len() {
            break;
        }
        let mut end = (at + n).min(s.len());
        while !s.is_char_boundary(end) {
            end += 1;
        }
        out.push(&s[at..end]);
        at = end;
    }
    out.push(&s[at..]);
    out
}

fn chars(s: &str) -> Vec<&str> {
    s.char_indices()
        .map(|(i, c)| &s[i..i + c.len_utf8()])
        .collect()
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(0x5eed_c1a7),
        failure_persistence: None,
        ..Config::default()
    }
}

#[test]
fn fixtures_whole_and_char_by_char() {
    for f in fixtures() {
        let whole = run_chunks(f.family, &f.options, &[&f.input]);
        assert_eq!(whole, f.expected, "fixture {} (whole)", f.name);
        let by_char = run_chunks(f.family, &f.options, &chars(&f.input));
        assert_eq!(by_char, f.expected, "fixture {} (char by char)", f.name);
    }
}

#[test]
fn garbage_comes_back_as_the_same_text() {
    for (family, input) in garbage() {
        for chunks in [vec![input.as_str()], chars(&input)] {
            let events = run_chunks(family, &ParserOptions::default(), &chunks);
            assert_eq!(events, t(&input), "{family:?}: {input:?}");
        }
    }
}

#[test]
fn truncated_fixtures_never_invent_calls() {
    for f in fixtures() {
        let full_calls = calls_of(&f.expected);
        for (cut, _) in f.input.char_indices() {
            let prefix = &f.input[..cut];
            let whole = run_chunks(f.family, &f.options, &[prefix]);
            let by_char = run_chunks(f.family, &f.options, &chars(prefix));
            assert_eq!(whole, by_char, "{} cut at {cut}", f.name);
            let calls = calls_of(&whole);
            assert!(
                full_calls.starts_with(&calls),
                "{} cut at {cut}: {calls:?} not a prefix of {full_calls:?}",
                f.name
            );
            // Nothing is duplicated: what comes out is no longer than what went in.
            assert!(
                visible_len(&whole) <= prefix.len(),
                "{} cut at {cut}",
                f.name
            );
        }
    }
}

fn calls_of(events: &[ParseEvent]) -> Vec<(String, String)> {
    let mut calls = Vec::new();
    for e in events {
        match e {
            ParseEvent::ToolCallStart { name, .. } => calls.push((name.clone(), String::new())),
            ParseEvent::ToolCallArgs { delta, .. } => {
                if let Some(c) = calls.last_mut() {
                    c.1.push_str(delta);
                }
            }
            _ => {}
        }
    }
    calls
}

fn visible_len(events: &[ParseEvent]) -> usize {
    events
        .iter()
        .map(|e| match e {
            T(s) | R(s) => s.len(),
            _ => 0,
        })
        .sum()
}

#[test]
fn registry_picks_families() {
    use Family::*;
    assert_eq!(Family::detect("qwen3:8b", None), Hermes);
    assert_eq!(
        Family::detect("Qwen/Qwen3-Coder-30B-A3B-Instruct-GGUF/x.gguf", None),
        Qwen3Coder
    );
    assert_eq!(
        Family::detect("unsloth/gpt-oss-20b-GGUF/gpt-oss-20b-Q4_K_M.gguf", None),
        Harmony
    );
    assert_eq!(Family::detect("zai-org/GLM-4.6-GGUF/a.gguf", None), Glm45);
    assert_eq!(Family::detect("moonshotai/Kimi-K2-Instruct", None), KimiK2);
    assert_eq!(Family::detect("mistral-small3.2:24b", None), Mistral);
    assert_eq!(Family::detect("llama3.2:3b", None), Llama3Json);
    assert_eq!(Family::detect("deepseek-r1:8b", None), DeepSeek);
    assert_eq!(Family::detect("phi4", None), Plain);
    // The template wins over the name.
    assert_eq!(
        Family::detect(
            "my-finetune",
            Some("{{'<tool_call>\\n' + tool_call | tojson}}")
        ),
        Hermes
    );
    assert_eq!(
        Family::detect(
            "qwen3",
            Some("<tool_call>\n<function={{name}}>\n<parameter={{k}}>")
        ),
        Qwen3Coder
    );
    assert_eq!(
        Family::detect("x", Some("<|start|>{{role}}<|channel|>x<|message|>")),
        Harmony
    );
    assert_eq!(
        Family::detect("x", Some("[AVAILABLE_TOOLS]...[TOOL_CALLS]")),
        Mistral
    );
    for f in Family::ALL {
        assert_eq!(Family::from_name(f.name()), Some(f));
    }
    assert_eq!(Family::from_name("Qwen3-Coder"), Some(Qwen3Coder));
    assert_eq!(Family::from_name("nope"), None);
    assert!(Hermes.prompt_opens_reasoning("<|im_start|>assistant\n<think>\n"));
    assert!(!Hermes.prompt_opens_reasoning("<|im_start|>assistant\n<think>\n\n</think>\n\n"));
    assert!(Mistral.prompt_opens_reasoning("[INST]x[/INST][THINK]"));
    assert!(!Harmony.prompt_opens_reasoning("<think>"));
}

/// Pieces that exercise every family's markers, mixed with text.
fn alphabet() -> Vec<&'static str> {
    vec![
        "<tool_call>",
        "</tool_call>",
        "<think>",
        "</think>",
        "<function=f>",
        "<parameter=a>",
        "</parameter>",
        "</function>",
        "<arg_key>",
        "</arg_key>",
        "<arg_value>",
        "</arg_value>",
        "<|channel|>",
        "<|message|>",
        "<|start|>",
        "<|end|>",
        "<|call|>",
        "<|return|>",
        "<|constrain|>",
        "analysis",
        "final",
        "commentary",
        " to=functions.f ",
        "<|tool_calls_section_begin|>",
        "<|tool_calls_section_end|>",
        "<|tool_call_begin|>",
        "<|tool_call_end|>",
        "<|tool_call_argument_begin|>",
        "functions.f:0",
        "[TOOL_CALLS]",
        "[ARGS]",
        "[CALL_ID]",
        "[THINK]",
        "[/THINK]",
        "<|python_tag|>",
        CALLS_BEGIN,
        CALLS_END,
        CALL_BEGIN,
        CALL_END,
        SEP,
        "function",
        "```json\n",
        "```",
        "{",
        "}",
        "[",
        "]",
        "\"",
        "\\",
        ":",
        ",",
        ";",
        " ",
        "\n",
        "name",
        "\"name\": \"f\"",
        "\"arguments\": {}",
        "\"parameters\": ",
        "{\"name\": \"f\", \"arguments\": {\"a\": 1}}",
        "a",
        "é",
        "東",
        "<",
        "|",
        ">",
        "<|",
        "|>",
        "<｜",
        "｜>",
    ]
}

fn soup() -> impl Strategy<Value = String> {
    let alpha = alphabet();
    prop::collection::vec(prop::sample::select(alpha), 0..40).prop_map(|v| v.concat())
}

fn sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..16, 0..64)
}

proptest! {
    #![proptest_config(config(300))]

    /// Every fixture, chunked at random, gives the golden events.
    #[test]
    fn fixtures_in_random_chunks(which in 0usize..64, sizes in sizes()) {
        let all = fixtures();
        let f = &all[which % all.len()];
        let events = run_chunks(f.family, &f.options, &chunk(&f.input, &sizes));
        prop_assert_eq!(&events, &f.expected, "fixture {}", f.name);
    }

    /// Garbage, chunked at random, is still the same text.
    #[test]
    fn garbage_in_random_chunks(which in 0usize..64, sizes in sizes()) {
        let all = garbage();
        let (family, input) = &all[which % all.len()];
        let events = run_chunks(*family, &ParserOptions::default(), &chunk(input, &sizes));
        prop_assert_eq!(events, t(input));
    }

    /// Marker soup: no parser panics, and chunking never changes the result.
    #[test]
    fn marker_soup_is_chunking_invariant(input in soup(), sizes in sizes()) {
        for family in Family::ALL {
            let options = ParserOptions::default();
            let whole = run_chunks(family, &options, &[&input]);
            let chunked = run_chunks(family, &options, &chunk(&input, &sizes));
            prop_assert_eq!(&whole, &chunked, "{:?} on {:?}", family, input);
            prop_assert!(visible_len(&whole) <= input.len());
        }
    }

    /// Random bytes (lossily decoded): no parser panics or loses plain text.
    #[test]
    fn random_bytes_do_not_panic(bytes in prop::collection::vec(any::<u8>(), 0..256), sizes in sizes()) {
        let input = String::from_utf8_lossy(&bytes).into_owned();
        for family in Family::ALL {
            let options = ParserOptions { starts_in_reasoning: bytes.first() == Some(&0), ..ParserOptions::default() };
            let whole = run_chunks(family, &options, &[&input]);
            let chunked = run_chunks(family, &options, &chunk(&input, &sizes));
            prop_assert_eq!(&whole, &chunked, "{:?}", family);
        }
    }

    /// Text with no marker characters passes through every parser unchanged.
    #[test]
    fn plain_text_is_untouched(input in "[a-zA-Z0-9 .,!?é東\n\t]{0,200}", sizes in sizes()) {
        for family in Family::ALL {
            let events = run_chunks(family, &ParserOptions::default(), &chunk(&input, &sizes));
            prop_assert_eq!(events, t(&input), "{:?}", family);
        }
    }
}

/// One call per family whose argument is `payload` (a JSON-safe string).
fn long_call(family: Family, payload: &str) -> Option<String> {
    use Family::*;
    let args = format!("{{\"text\": \"{payload}\"}}");
    Some(match family {
        Hermes => format!("<tool_call>\n{{\"name\": \"w\", \"arguments\": {args}}}\n</tool_call>"),
        Qwen3Coder => format!(
            "<tool_call>\n<function=w>\n<parameter=text>\n{payload}\n</parameter>\n</function>\n</tool_call>"
        ),
        Glm45 => format!("<tool_call>w\n<arg_key>text</arg_key>\n<arg_value>{payload}</arg_value>\n</tool_call>"),
        Harmony => format!("<|channel|>commentary to=functions.w <|constrain|>json<|message|>{args}<|call|>"),
        KimiK2 => format!(
            "<|tool_calls_section_begin|><|tool_call_begin|>functions.w:0<|tool_call_argument_begin|>{args}<|tool_call_end|><|tool_calls_section_end|>"
        ),
        Mistral => format!("[TOOL_CALLS]w[ARGS]{args}"),
        Llama3Json => format!("{{\"name\": \"w\", \"parameters\": {args}}}"),
        DeepSeek => format!("{CALLS_BEGIN}{CALL_BEGIN}w{SEP}{args}{CALL_END}{CALLS_END}"),
        Plain => return None,
    })
}

/// Feeding stays linear: a 256 KiB argument in 3-byte chunks.
#[test]
fn long_call_in_small_chunks() {
    let payload = "lorem ipsum dolor sit amet ".repeat(256 * 1024 / 27);
    for family in Family::ALL {
        let Some(input) = long_call(family, &payload) else {
            continue;
        };
        let events = run_chunks(
            family,
            &ParserOptions::default(),
            &chunk(&input, &[3; 1 << 17]),
        );
        let calls = calls_of(&events);
        assert_eq!(calls.len(), 1, "{family:?}");
        assert!(calls[0].1.contains(&payload[..1000]), "{family:?}");
    }
}

/// Throughput per family (`cargo nextest run -p clawpen-inference --run-ignored only throughput`).
#[test]
#[ignore]
fn throughput() {
    for f in fixtures() {
        let input = format!("{}\n", f.input).repeat((1 << 20) / (f.input.len() + 1) + 1);
        let pieces = chunk(&input, &vec![4; input.len() / 4]);
        let start = std::time::Instant::now();
        let mut p = f.family.parser(f.options.clone());
        let mut n = 0;
        for c in &pieces {
            n += p.feed(c).len();
        }
        n += p.finish().len();
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{:<48} {:>8.1} MB/s ({} events)",
            f.name,
            input.len() as f64 / secs / 1e6,
            n
        );
    }
}
