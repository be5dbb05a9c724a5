//! OpenAI chat request → Converse request.
//!
//! - `system`/`developer` messages become `system` blocks, wherever they are.
//! - Turns alternate `user`/`assistant`; consecutive turns of one role are
//!   merged, so the results of parallel tool calls share one user turn, as
//!   Converse requires.
//! - Images must be `data:` URLs: Converse takes bytes, never a URL.
//! - `tool_choice: "none"` omits the tools altogether (Converse has no
//!   "none"). Bedrock refuses `toolUse`/`toolResult` blocks without a
//!   `toolConfig`, so when the app offers no tool, the history's tool calls
//!   and results travel as text ([`ToolHistory::Text`]) and the model cannot
//!   call a tool.
//! - Bedrock refuses blank text blocks: blank text is left out, and a blank
//!   tool result becomes [`EMPTY_TOOL_RESULT`].
//! - `response_format` (`json_object`, `json_schema`) is emulated with a tool,
//!   [`JSON_TOOL`], whose input schema is the wanted schema and which the model
//!   is made to call; its input comes back as the message content.
//! - Parameters Converse cannot honour (`n` > 1, `seed`, penalties,
//!   `logprobs`, `logit_bias`) are refused rather than silently dropped.
//!   `parallel_tool_calls` is a hint Converse has no field for; it is ignored.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::{Value, json};

use super::super::{ErrorKind, ProviderError};
use crate::api::chat::{ChatRequest, Content, ContentPart, Message, ResponseFormat, Role};

/// The tool that stands in for `response_format`.
pub(super) const JSON_TOOL: &str = "json_response";

/// What a tool result with no text says instead: Bedrock refuses a blank
/// text block, and the model should still read that the tool answered.
const EMPTY_TOOL_RESULT: &str = "(the tool returned no output)";

/// How the history's tool calls and results are sent.
#[derive(Clone, Copy, Debug, PartialEq)]
enum ToolHistory {
    /// As `toolUse`/`toolResult` blocks, when the app offers tools.
    Blocks,
    /// As text, when it offers none: Bedrock refuses tool blocks without a
    /// `toolConfig`, and one that only holds the response-format tool would
    /// name none of the history's tools.
    Text,
}

/// A Converse request body.
#[derive(Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(super) struct ConverseRequest {
    messages: Vec<Turn>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    system: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inference_config: Option<InferenceConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<Value>,
}

#[derive(Debug, Serialize, PartialEq)]
struct Turn {
    role: &'static str,
    content: Vec<Value>,
}

#[derive(Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct InferenceConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<String>,
}

/// The request to send, and what the answer needs to be read back.
#[derive(Debug)]
pub(super) struct Translated {
    /// The Converse body.
    pub(super) body: ConverseRequest,
    /// The response-format tool's name, when one stands in for `response_format`.
    pub(super) json_tool: Option<String>,
}

/// Translates an OpenAI chat request.
///
/// # Errors
/// `Unsupported` for what Converse cannot do; `BadRequest` for a request
/// that is inconsistent in itself (a tool message without its call id).
pub(super) fn translate(request: &ChatRequest) -> Result<Translated, ProviderError> {
    refuse_unsupported(request)?;
    let (tool_config, json_tool) = tool_config(request)?;
    let offers_tools =
        tool_choice(request)? != ToolChoice::None && request.tools.iter().flatten().next().is_some();
    let history = if offers_tools {
        ToolHistory::Blocks
    } else {
        ToolHistory::Text
    };
    let mut body = ConverseRequest {
        tool_config,
        ..ConverseRequest::default()
    };
    // Tool names by call id, so a result sent as text can name its tool.
    let mut tool_names: HashMap<&str, &str> = HashMap::new();
    for message in &request.messages {
        match message.role {
            Role::System | Role::Developer => {
                body.system
                    .extend(non_empty(message.text()).map(|text| json!({ "text": text })));
            }
            Role::User => push_turn(&mut body.messages, "user", user_blocks(message)?),
            Role::Assistant => {
                for call in message.tool_calls.iter().flatten() {
                    tool_names.insert(&call.id, &call.function.name);
                }
                push_turn(
                    &mut body.messages,
                    "assistant",
                    assistant_blocks(message, history)?,
                );
            }
            Role::Tool => push_turn(
                &mut body.messages,
                "user",
                vec![tool_result(message, history, &tool_names)?],
            ),
        }
    }
    let inference = InferenceConfig {
        max_tokens: request.max_output_tokens(),
        temperature: request.temperature,
        top_p: request.top_p,
        stop_sequences: request.stop_sequences(),
    };
    body.inference_config = (inference != InferenceConfig::default()).then_some(inference);
    Ok(Translated { body, json_tool })
}

fn refuse_unsupported(request: &ChatRequest) -> Result<(), ProviderError> {
    let nonzero = |v: Option<f64>| v.is_some_and(|v| v != 0.0);
    let extra_set = |name: &str| match request.extra.get(name) {
        None | Some(Value::Null | Value::Bool(false)) => false,
        Some(Value::Object(map)) => !map.is_empty(),
        Some(_) => true,
    };
    let refused = [
        ("n > 1", request.n.is_some_and(|n| n > 1)),
        ("seed", request.seed.is_some()),
        ("presence_penalty", nonzero(request.presence_penalty)),
        ("frequency_penalty", nonzero(request.frequency_penalty)),
        ("logprobs", extra_set("logprobs")),
        ("top_logprobs", extra_set("top_logprobs")),
        ("logit_bias", extra_set("logit_bias")),
    ];
    match refused.iter().find(|(_, set)| *set) {
        Some((name, _)) => Err(ProviderError::unsupported(format!(
            "Bedrock Converse cannot honour {name}"
        ))),
        None => Ok(()),
    }
}

/// The text, unless it is blank: Bedrock refuses blank text blocks.
fn non_empty(text: String) -> Option<String> {
    (!text.trim().is_empty()).then_some(text)
}

/// Appends blocks as a turn, merged into the previous turn of the same role.
/// A turn with no blocks is dropped: Converse refuses empty content.
fn push_turn(turns: &mut Vec<Turn>, role: &'static str, blocks: Vec<Value>) {
    if blocks.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some(last) if last.role == role => last.content.extend(blocks),
        _ => turns.push(Turn {
            role,
            content: blocks,
        }),
    }
}

fn user_blocks(message: &Message) -> Result<Vec<Value>, ProviderError> {
    match &message.content {
        None => Ok(Vec::new()),
        Some(Content::Text(text)) => Ok(non_empty(text.clone())
            .map(|text| json!({ "text": text }))
            .into_iter()
            .collect()),
        Some(Content::Parts(parts)) => parts
            .iter()
            .filter_map(|part| part_block(part).transpose())
            .collect(),
    }
}

fn part_block(part: &ContentPart) -> Result<Option<Value>, ProviderError> {
    match part.kind.as_str() {
        "text" | "refusal" => Ok(part
            .text
            .clone()
            .or_else(|| {
                part.extra
                    .get("refusal")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .and_then(non_empty)
            .map(|text| json!({ "text": text }))),
        "image_url" => {
            let image = part
                .image_url
                .as_ref()
                .ok_or_else(|| bad_request("an image_url part has no image_url"))?;
            let Some((media_type, data)) = image.as_inline() else {
                return Err(ProviderError::unsupported(
                    "Bedrock Converse takes images as bytes only: send the image as a data: URL, not a link",
                ));
            };
            let format = match media_type {
                "image/png" => "png",
                "image/jpeg" | "image/jpg" => "jpeg",
                "image/gif" => "gif",
                "image/webp" => "webp",
                other => {
                    return Err(ProviderError::unsupported(format!(
                        "Bedrock Converse takes png, jpeg, gif or webp images, not {other}"
                    )));
                }
            };
            Ok(Some(
                json!({ "image": { "format": format, "source": { "bytes": data } } }),
            ))
        }
        other => Err(ProviderError::unsupported(format!(
            "Bedrock Converse cannot take {other} content parts"
        ))),
    }
}

fn assistant_blocks(message: &Message, history: ToolHistory) -> Result<Vec<Value>, ProviderError> {
    let mut blocks = user_blocks(message)?;
    for call in message.tool_calls.iter().flatten() {
        let arguments = call.function.arguments.trim();
        let arguments = if arguments.is_empty() { "{}" } else { arguments };
        let name = &call.function.name;
        blocks.push(match history {
            ToolHistory::Blocks => {
                let input: Value = serde_json::from_str(arguments).map_err(|_| {
                    bad_request(format!("the arguments of tool call {} are not JSON", call.id))
                })?;
                json!({ "toolUse": { "toolUseId": call.id, "name": name, "input": input } })
            }
            ToolHistory::Text => {
                json!({ "text": format!("[Called tool {name} with {arguments} (call id {})]", call.id) })
            }
        });
    }
    Ok(blocks)
}

/// A tool's answer: as a block, a JSON object stays structured and anything
/// else is text; without tools on offer, one text line naming the call.
fn tool_result(
    message: &Message,
    history: ToolHistory,
    tool_names: &HashMap<&str, &str>,
) -> Result<Value, ProviderError> {
    let id = message
        .tool_call_id
        .as_ref()
        .ok_or_else(|| bad_request("a tool message has no tool_call_id"))?;
    let text = non_empty(message.text()).unwrap_or_else(|| EMPTY_TOOL_RESULT.to_owned());
    if history == ToolHistory::Text {
        let tool = tool_names
            .get(id.as_str())
            .map_or_else(String::new, |name| format!(" {name}"));
        return Ok(json!({ "text": format!("[Result of tool{tool} (call id {id}): {text}]") }));
    }
    let content = match serde_json::from_str::<Value>(&text) {
        Ok(object @ Value::Object(_)) => json!([{ "json": object }]),
        _ => json!([{ "text": text }]),
    };
    Ok(json!({ "toolResult": { "toolUseId": id, "content": content } }))
}

/// What the app allows the model to do with its tools.
#[derive(Debug, PartialEq)]
enum ToolChoice {
    Unset,
    None,
    Auto,
    Required,
    Named(String),
}

fn tool_choice(request: &ChatRequest) -> Result<ToolChoice, ProviderError> {
    let Some(choice) = &request.tool_choice else {
        return Ok(ToolChoice::Unset);
    };
    match choice {
        Value::String(s) if s == "none" => Ok(ToolChoice::None),
        Value::String(s) if s == "auto" => Ok(ToolChoice::Auto),
        Value::String(s) if s == "required" => Ok(ToolChoice::Required),
        Value::Object(_) => choice
            .pointer("/function/name")
            .and_then(Value::as_str)
            .map(|name| ToolChoice::Named(name.to_owned()))
            .ok_or_else(|| bad_request("tool_choice names no function")),
        _ => Err(bad_request(format!(
            "tool_choice {choice} is not none, auto, required or a function"
        ))),
    }
}

fn tool_spec(name: &str, description: Option<&str>, schema: Option<&Value>) -> Value {
    let schema = schema
        .cloned()
        .unwrap_or_else(|| json!({ "type": "object", "properties": {} }));
    let mut spec = json!({ "name": name, "inputSchema": { "json": schema } });
    if let Some(description) = description {
        spec["description"] = description.into();
    }
    json!({ "toolSpec": spec })
}

/// The tool standing in for `response_format`, if it asks for JSON.
fn json_tool_spec(format: Option<&ResponseFormat>) -> Option<Value> {
    let format = format?;
    let intro = "Give your final answer by calling this tool: its input is the answer, as JSON.";
    match format.kind.as_str() {
        "json_object" => Some(tool_spec(
            JSON_TOOL,
            Some(intro),
            Some(&json!({ "type": "object" })),
        )),
        "json_schema" => {
            let schema = format.json_schema.as_ref();
            let description = match schema.and_then(|s| s.description.as_deref()) {
                Some(what) => format!("{intro} {what}"),
                None => intro.to_owned(),
            };
            Some(tool_spec(
                JSON_TOOL,
                Some(&description),
                schema.and_then(|s| s.schema.as_ref()),
            ))
        }
        _ => None,
    }
}

/// `toolConfig`, and the response-format tool's name when there is one.
fn tool_config(request: &ChatRequest) -> Result<(Option<Value>, Option<String>), ProviderError> {
    let choice = tool_choice(request)?;
    let app_tools = request
        .tools
        .iter()
        .flatten()
        .filter(|_| choice != ToolChoice::None);
    let mut tools: Vec<Value> = Vec::new();
    for tool in app_tools {
        let function = &tool.function;
        if function.name == JSON_TOOL && json_tool_spec(request.response_format.as_ref()).is_some() {
            return Err(bad_request(format!(
                "the tool name {JSON_TOOL} is reserved when response_format asks for JSON"
            )));
        }
        tools.push(tool_spec(
            &function.name,
            function.description.as_deref(),
            function.parameters.as_ref(),
        ));
    }
    let wants_answer = matches!(choice, ToolChoice::Unset | ToolChoice::Auto | ToolChoice::None);
    let json_tool = json_tool_spec(request.response_format.as_ref()).filter(|_| wants_answer);
    let converse_choice = match (&json_tool, &choice) {
        // A JSON answer is due: the model must call a tool, and with no
        // other tool on offer, that one.
        (Some(_), _) if tools.is_empty() => Some(json!({ "tool": { "name": JSON_TOOL } })),
        (Some(_), _) => Some(json!({ "any": {} })),
        (None, ToolChoice::Auto) => Some(json!({ "auto": {} })),
        (None, ToolChoice::Required) => Some(json!({ "any": {} })),
        (None, ToolChoice::Named(name)) => {
            if !tools.iter().any(|t| t["toolSpec"]["name"] == name.as_str()) {
                return Err(bad_request(format!(
                    "tool_choice names {name}, which is not among the tools"
                )));
            }
            Some(json!({ "tool": { "name": name } }))
        }
        (None, ToolChoice::Unset | ToolChoice::None) => None,
    };
    let json_tool_name = json_tool.as_ref().map(|_| JSON_TOOL.to_owned());
    tools.extend(json_tool);
    if tools.is_empty() {
        return Ok((None, None));
    }
    let mut config = json!({ "tools": tools });
    if let Some(choice) = converse_choice {
        config["toolChoice"] = choice;
    }
    Ok((Some(config), json_tool_name))
}

fn bad_request(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ErrorKind::BadRequest, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translated(request: Value) -> Value {
        let request: ChatRequest = serde_json::from_value(request).expect("a valid OpenAI request");
        serde_json::to_value(translate(&request).expect("translatable").body).expect("serializable")
    }

    fn refused(request: Value) -> ProviderError {
        let request: ChatRequest = serde_json::from_value(request).expect("a valid OpenAI request");
        translate(&request).expect_err("refused")
    }

    #[test]
    fn a_conversation_with_tools_becomes_converse_turns() {
        let body = translated(json!({
            "model": "smart",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": "Use metric units."},
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"role": "user", "content": [
                    {"type": "text", "text": "Here is a map."},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
                ]},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "{\"celsius\":21}"},
                {"role": "tool", "tool_call_id": "call_2", "content": "sunny, 25 degrees"}
            ],
            "tools": [{"type": "function", "function": {"name": "weather", "description": "Current weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": "auto",
            "max_tokens": 300, "temperature": 0.2, "top_p": 0.9, "stop": "END"
        }));
        assert_eq!(
            body["system"],
            json!([{"text": "Be brief."}, {"text": "Use metric units."}])
        );
        assert_eq!(
            body["messages"],
            json!([
                {"role": "user", "content": [
                    {"text": "Weather in Paris and Rome?"},
                    {"text": "Here is a map."},
                    {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}}
                ]},
                {"role": "assistant", "content": [
                    {"toolUse": {"toolUseId": "call_1", "name": "weather", "input": {"city": "Paris"}}},
                    {"toolUse": {"toolUseId": "call_2", "name": "weather", "input": {"city": "Rome"}}}
                ]},
                {"role": "user", "content": [
                    {"toolResult": {"toolUseId": "call_1", "content": [{"json": {"celsius": 21}}]}},
                    {"toolResult": {"toolUseId": "call_2", "content": [{"text": "sunny, 25 degrees"}]}}
                ]}
            ])
        );
        assert_eq!(
            body["inferenceConfig"],
            json!({"maxTokens": 300, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]})
        );
        assert_eq!(
            body["toolConfig"],
            json!({
                "tools": [{"toolSpec": {"name": "weather", "description": "Current weather",
                    "inputSchema": {"json": {"type": "object", "properties": {"city": {"type": "string"}}}}}}],
                "toolChoice": {"auto": {}}
            })
        );
    }

    #[test]
    fn tool_choice_maps_to_converse_and_none_drops_the_tools() {
        let with_choice = |choice: Value| {
            translated(json!({
                "model": "m", "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"type": "function", "function": {"name": "lookup"}}],
                "tool_choice": choice
            }))
        };
        assert_eq!(
            with_choice(json!("required"))["toolConfig"]["toolChoice"],
            json!({"any": {}})
        );
        assert_eq!(
            with_choice(json!({"type": "function", "function": {"name": "lookup"}}))["toolConfig"]["toolChoice"],
            json!({"tool": {"name": "lookup"}})
        );
        assert_eq!(with_choice(json!("none")).get("toolConfig"), None);
        let error = refused(json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "lookup"}}],
            "tool_choice": {"type": "function", "function": {"name": "other"}}
        }));
        assert_eq!(error.kind, ErrorKind::BadRequest);
    }

    #[test]
    fn response_format_becomes_a_forced_tool() {
        let body = translated(json!({
            "model": "m", "messages": [{"role": "user", "content": "Name a colour"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "colour", "description": "One colour.",
                "schema": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}}}
        }));
        let tool = &body["toolConfig"]["tools"][0]["toolSpec"];
        assert_eq!(tool["name"], JSON_TOOL);
        assert_eq!(tool["inputSchema"]["json"]["required"], json!(["name"]));
        assert!(
            tool["description"]
                .as_str()
                .is_some_and(|d| d.ends_with("One colour."))
        );
        assert_eq!(
            body["toolConfig"]["toolChoice"],
            json!({"tool": {"name": JSON_TOOL}})
        );

        let with_app_tools = translated(json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "lookup"}}],
            "response_format": {"type": "json_object"}
        }));
        assert_eq!(
            with_app_tools["toolConfig"]["tools"].as_array().map(Vec::len),
            Some(2)
        );
        assert_eq!(with_app_tools["toolConfig"]["toolChoice"], json!({"any": {}}));
    }

    /// A recorded pair: an OpenAI request and the Converse body it must become.
    fn fixture_pair(fixture: &str) -> (Value, Value) {
        let pair: Value = serde_json::from_str(fixture).expect("a JSON fixture");
        (pair["openai"].clone(), pair["converse"].clone())
    }

    #[test]
    fn a_tool_history_with_no_tool_on_offer_travels_as_text() {
        let (request, converse) = fixture_pair(include_str!(
            "../../../../test-support/fixtures/bedrock/tool_history_without_tools.json"
        ));
        assert_eq!(translated(request.clone()), converse);

        // tool_choice "none" offers no tool either: same text, no toolConfig.
        let mut none = request.clone();
        none["tools"] = json!([{"type": "function", "function": {"name": "weather"}}]);
        none["tool_choice"] = json!("none");
        assert_eq!(translated(none), converse);

        // With a tool on offer the history keeps its blocks.
        let mut offered = request;
        offered["tools"] = json!([{"type": "function", "function": {"name": "weather"}}]);
        let body = translated(offered);
        assert_eq!(
            body["messages"][1]["content"][0],
            json!({"toolUse": {"toolUseId": "tooluse_Qm3wY1JxS8eAAk2pX0ZpHg", "name": "current_time", "input": {}}})
        );
        assert!(body["toolConfig"]["tools"].is_array());
    }

    #[test]
    fn with_only_the_response_format_tool_the_history_is_text_too() {
        let (mut request, converse) = fixture_pair(include_str!(
            "../../../../test-support/fixtures/bedrock/tool_history_without_tools.json"
        ));
        request["response_format"] = json!({"type": "json_object"});
        let body = translated(request);
        let tools = body["toolConfig"]["tools"].as_array().expect("a toolConfig");
        assert_eq!(tools.len(), 1, "only the response-format tool: {tools:?}");
        assert_eq!(tools[0]["toolSpec"]["name"], JSON_TOOL);
        assert_eq!(body["messages"], converse["messages"]);
    }

    #[test]
    fn a_blank_tool_result_becomes_a_placeholder_and_blank_text_is_left_out() {
        let (request, converse) = fixture_pair(include_str!(
            "../../../../test-support/fixtures/bedrock/empty_tool_result.json"
        ));
        assert_eq!(translated(request), converse);

        let body = translated(json!({"model": "m", "messages": [
            {"role": "system", "content": "  "},
            {"role": "user", "content": [{"type": "text", "text": "\n"}, {"type": "text", "text": "hi"}]}
        ]}));
        assert_eq!(body.get("system"), None);
        assert_eq!(
            body["messages"],
            json!([{"role": "user", "content": [{"text": "hi"}]}])
        );
    }

    #[test]
    fn what_converse_cannot_do_is_refused_by_name() {
        let base = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let with = |field: &str, value: Value| {
            let mut request = base.clone();
            request[field] = value;
            request
        };
        for (field, value, named) in [
            ("n", json!(2), "n > 1"),
            ("seed", json!(7), "seed"),
            ("presence_penalty", json!(0.5), "presence_penalty"),
            ("frequency_penalty", json!(-1.0), "frequency_penalty"),
            ("logprobs", json!(true), "logprobs"),
            ("logit_bias", json!({"50256": -100}), "logit_bias"),
        ] {
            let error = refused(with(field, value));
            assert_eq!(error.kind, ErrorKind::Unsupported, "{field}");
            assert!(error.message.contains(named), "{}", error.message);
        }
        for (field, value) in [
            ("n", json!(1)),
            ("presence_penalty", json!(0.0)),
            ("logprobs", json!(false)),
        ] {
            translated(with(field, value));
        }
        let linked = refused(json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
        ]}]}));
        assert_eq!(linked.kind, ErrorKind::Unsupported);
        assert!(linked.message.contains("data: URL"), "{}", linked.message);
    }
}
