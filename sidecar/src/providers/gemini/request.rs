//! OpenAI chat request → Gemini `generateContent` request.
//!
//! - System and developer messages, wherever they stand, become one
//!   `systemInstruction` (text only); the other turns alternate `user`/`model`,
//!   consecutive ones of the same role merged, tool results sent as `user`.
//! - Tool results become `functionResponse` parts named after the assistant
//!   call they answer; a result that is not a JSON object is wrapped as
//!   `{"result": …}`.
//! - `response_format: json_schema` becomes `responseMimeType` plus
//!   `responseSchema` (Gemini's OpenAPI dialect, which every Gemini model takes;
//!   `responseJsonSchema` is newer and model-dependent), translated like tool
//!   parameters by `schema`. `strict` has no Gemini equivalent and is dropped.
//! - `reasoning_effort` becomes a `thinkingBudget`; `user` is not sent (Gemini
//!   has no such field). Parameters Gemini cannot honour are refused by name.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::super::{ErrorKind, ProviderError};
use super::schema;
use super::wire::{
    Blob, Content, FileData, FunctionCall, FunctionCallingConfig, FunctionDeclaration, FunctionResponse,
    GenerateContentRequest, GenerationConfig, Part, ThinkingConfig, Tool, ToolConfig,
};
use crate::api::chat::{ChatRequest, Content as MessageContent, ContentPart, Message, Role};

/// What llmesh puts in `thoughtSignature` of replayed function calls. OpenAI's
/// format has no field to carry Gemini 3's real signature through the app, and
/// Gemini 3 refuses a current-turn function call without one; Google documents
/// this value for history whose signatures are unknown. Gemini 2.x ignores it.
pub(super) const SKIPPED_THOUGHT_SIGNATURE: &str = "skip_thought_signature_validator";

/// OpenAI request fields Gemini has no equivalent for. A request that sets
/// one is refused rather than answered without it.
const UNSUPPORTED_FIELDS: &[&str] = &[
    "logit_bias",
    "top_logprobs",
    "audio",
    "prediction",
    "web_search_options",
    "functions",
    "function_call",
];

/// Translates an OpenAI chat request.
///
/// # Errors
/// `Unsupported` for a parameter Gemini cannot honour, `BadRequest` for a
/// request that is inconsistent (a tool result for a call never made).
pub(super) fn translate(request: &ChatRequest) -> Result<GenerateContentRequest, ProviderError> {
    refuse_unsupported(request)?;
    let mut system = Vec::new();
    let mut contents: Vec<Content> = Vec::new();
    // Gemini answers a function call by name; OpenAI by call id.
    let mut call_names: HashMap<&str, &str> = HashMap::new();
    for message in &request.messages {
        let (role, parts) = match message.role {
            Role::System | Role::Developer => {
                system.extend(system_parts(message)?);
                continue;
            }
            Role::User => ("user", user_parts(message.content.as_ref())?),
            Role::Assistant => ("model", assistant_parts(message, &mut call_names)?),
            Role::Tool => ("user", vec![function_response(message, &call_names)?]),
        };
        if parts.is_empty() {
            continue;
        }
        match contents.last_mut() {
            Some(last) if last.role.as_deref() == Some(role) => last.parts.extend(parts),
            _ => contents.push(Content {
                role: Some(role.to_owned()),
                parts,
            }),
        }
    }
    if contents.is_empty() {
        return Err(ProviderError::new(
            ErrorKind::BadRequest,
            "Gemini needs at least one user or assistant message",
        ));
    }
    let (tools, tool_config) = tools(request)?;
    Ok(GenerateContentRequest {
        contents,
        system_instruction: (!system.is_empty()).then_some(Content {
            role: None,
            parts: system,
        }),
        tools,
        tool_config,
        generation_config: generation_config(request)?,
    })
}

fn refuse_unsupported(request: &ChatRequest) -> Result<(), ProviderError> {
    let refuse = |name: &str, why: &str| {
        Err(ProviderError::unsupported(format!(
            "Gemini cannot honour `{name}`: {why}"
        )))
    };
    if request.parallel_tool_calls == Some(false) {
        return refuse(
            "parallel_tool_calls",
            "it cannot be limited to one function call per turn",
        );
    }
    if request
        .extra
        .get("logprobs")
        .is_some_and(|v| !v.is_null() && v.as_bool() != Some(false))
    {
        return refuse("logprobs", "llmesh does not translate Gemini's log probabilities");
    }
    if let Some(modalities) = request.extra.get("modalities")
        && modalities
            .as_array()
            .is_none_or(|m| m.iter().any(|m| m != "text"))
    {
        return refuse("modalities", "only text output is translated");
    }
    match UNSUPPORTED_FIELDS
        .iter()
        .find(|name| request.extra.get(**name).is_some_and(|v| !v.is_null()))
    {
        Some(name) => refuse(name, "the Gemini API has no such parameter"),
        None => Ok(()),
    }
}

/// System instructions take text only.
fn system_parts(message: &Message) -> Result<Vec<Part>, ProviderError> {
    let parts = user_parts(message.content.as_ref())?;
    if parts.iter().any(|p| p.text.is_none()) {
        return Err(ProviderError::unsupported(
            "Gemini takes only text in system instructions",
        ));
    }
    Ok(parts)
}

fn user_parts(content: Option<&MessageContent>) -> Result<Vec<Part>, ProviderError> {
    match content {
        None => Ok(Vec::new()),
        Some(MessageContent::Text(text)) => Ok(text_part(text).into_iter().collect()),
        Some(MessageContent::Parts(parts)) => parts
            .iter()
            .map(content_part)
            .filter_map(Result::transpose)
            .collect(),
    }
}

/// Gemini refuses empty text parts.
fn text_part(text: &str) -> Option<Part> {
    (!text.is_empty()).then(|| Part::text(text))
}

fn content_part(part: &ContentPart) -> Result<Option<Part>, ProviderError> {
    match part.kind.as_str() {
        "text" => Ok(part.text.as_deref().and_then(text_part)),
        "image_url" => {
            let image = part.image_url.as_ref().ok_or_else(|| {
                ProviderError::new(ErrorKind::BadRequest, "an image_url part has no image_url")
            })?;
            Ok(Some(match image.as_inline() {
                Some((mime_type, data)) => Part {
                    inline_data: Some(Blob {
                        mime_type: mime_type.to_owned(),
                        data: data.to_owned(),
                    }),
                    ..Part::default()
                },
                None => Part {
                    file_data: Some(FileData {
                        mime_type: guess_mime_type(&image.url).to_owned(),
                        file_uri: image.url.clone(),
                    }),
                    ..Part::default()
                },
            }))
        }
        "input_audio" => {
            let audio = part.extra.get("input_audio");
            let field = |name: &str| audio.and_then(|a| a.get(name)).and_then(Value::as_str);
            match (field("data"), field("format")) {
                (Some(data), Some(format)) => Ok(Some(Part {
                    inline_data: Some(Blob {
                        mime_type: format!("audio/{format}"),
                        data: data.to_owned(),
                    }),
                    ..Part::default()
                })),
                _ => Err(ProviderError::new(
                    ErrorKind::BadRequest,
                    "an input_audio part needs data and format",
                )),
            }
        }
        other => Err(ProviderError::unsupported(format!(
            "llmesh does not translate `{other}` content parts for Gemini"
        ))),
    }
}

/// Gemini wants a media type with every file URI; the URL's extension is the
/// only hint there is, and images are what apps send by URL.
fn guess_mime_type(url: &str) -> &'static str {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let file = path.rsplit('/').next().unwrap_or_default();
    let extension = file
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .unwrap_or_default();
    match extension.as_str() {
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "pdf" => "application/pdf",
        _ => "image/jpeg",
    }
}

fn assistant_parts<'m>(
    message: &'m Message,
    call_names: &mut HashMap<&'m str, &'m str>,
) -> Result<Vec<Part>, ProviderError> {
    let mut parts = match &message.content {
        Some(MessageContent::Text(text)) => text_part(text).into_iter().collect(),
        // Assistant parts are text (or refusals, which are not replayed).
        Some(MessageContent::Parts(items)) => items
            .iter()
            .filter(|p| p.kind == "text")
            .filter_map(|p| p.text.as_deref().and_then(text_part))
            .collect(),
        None => Vec::new(),
    };
    for (i, call) in message.tool_calls.iter().flatten().enumerate() {
        call_names.insert(&call.id, &call.function.name);
        let args = match call.function.arguments.trim() {
            "" => Value::Object(Map::new()),
            text => serde_json::from_str::<Value>(text)
                .ok()
                .filter(Value::is_object)
                .ok_or_else(|| {
                    ProviderError::new(
                        ErrorKind::BadRequest,
                        format!("the arguments of tool call {} are not a JSON object", call.id),
                    )
                })?,
        };
        parts.push(Part {
            function_call: Some(FunctionCall {
                name: call.function.name.clone(),
                args: Some(args),
            }),
            // Gemini 3 checks the first call of each step only.
            thought_signature: (i == 0).then(|| SKIPPED_THOUGHT_SIGNATURE.to_owned()),
            ..Part::default()
        });
    }
    Ok(parts)
}

fn function_response(message: &Message, call_names: &HashMap<&str, &str>) -> Result<Part, ProviderError> {
    let bad = |why: String| ProviderError::new(ErrorKind::BadRequest, why);
    let id = message
        .tool_call_id
        .as_deref()
        .ok_or_else(|| bad("a tool message has no tool_call_id".into()))?;
    let name = call_names.get(id).ok_or_else(|| {
        bad(format!(
            "tool message answers tool_call_id {id}, which no earlier assistant message made"
        ))
    })?;
    let text = message.text();
    // Gemini takes an object; anything else is wrapped.
    let response = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(object)) => Value::Object(object),
        Ok(other) => serde_json::json!({ "result": other }),
        Err(_) => serde_json::json!({ "result": text }),
    };
    Ok(Part {
        function_response: Some(FunctionResponse {
            name: (*name).to_owned(),
            response,
        }),
        ..Part::default()
    })
}

fn tools(request: &ChatRequest) -> Result<(Vec<Tool>, Option<ToolConfig>), ProviderError> {
    let mut declarations = Vec::new();
    for tool in request.tools.iter().flatten() {
        if tool.kind != "function" {
            return Err(ProviderError::unsupported(format!(
                "llmesh does not translate `{}` tools for Gemini",
                tool.kind
            )));
        }
        let parameters = match &tool.function.parameters {
            Some(parameters) => Some(schema::to_gemini(parameters)?),
            None => None,
        };
        declarations.push(FunctionDeclaration {
            name: tool.function.name.clone(),
            description: tool.function.description.clone(),
            // Gemini refuses an object schema without properties: a function
            // without arguments is declared with no parameters at all.
            parameters: parameters.filter(|p| {
                p.get("properties")
                    .and_then(Value::as_object)
                    .is_some_and(|o| !o.is_empty())
            }),
        });
    }
    let tools = if declarations.is_empty() {
        Vec::new()
    } else {
        vec![Tool {
            function_declarations: declarations,
        }]
    };
    let Some(choice) = &request.tool_choice else {
        return Ok((tools, None));
    };
    let config = |mode, names: Vec<String>| {
        Some(ToolConfig {
            function_calling_config: FunctionCallingConfig {
                mode,
                allowed_function_names: names,
            },
        })
    };
    let tool_config = match choice {
        Value::String(mode) if mode == "auto" => config("AUTO", Vec::new()),
        Value::String(mode) if mode == "none" => config("NONE", Vec::new()),
        Value::String(mode) if mode == "required" => config("ANY", Vec::new()),
        named => match named.pointer("/function/name").and_then(Value::as_str) {
            Some(name) => config("ANY", vec![name.to_owned()]),
            None => {
                return Err(ProviderError::new(
                    ErrorKind::BadRequest,
                    format!("tool_choice {named} is not one Gemini can follow"),
                ));
            }
        },
    };
    Ok((tools, tool_config))
}

fn generation_config(request: &ChatRequest) -> Result<GenerationConfig, ProviderError> {
    let seed = match request.seed {
        Some(seed) => Some(i32::try_from(seed).map_err(|_| {
            ProviderError::new(
                ErrorKind::BadRequest,
                "Gemini takes a 32-bit seed; this one is larger",
            )
        })?),
        None => None,
    };
    let (response_mime_type, response_schema) =
        match request.response_format.as_ref().map(|f| (f.kind.as_str(), f)) {
            None | Some(("text", _)) => (None, None),
            Some(("json_object", _)) => (Some("application/json"), None),
            Some(("json_schema", format)) => {
                let json_schema = format.json_schema.as_ref().and_then(|s| s.schema.as_ref());
                (
                    Some("application/json"),
                    json_schema.map(schema::to_gemini).transpose()?,
                )
            }
            Some((other, _)) => {
                return Err(ProviderError::unsupported(format!(
                    "Gemini cannot honour response_format `{other}`"
                )));
            }
        };
    Ok(GenerationConfig {
        temperature: request.temperature,
        top_p: request.top_p,
        max_output_tokens: request.max_output_tokens(),
        stop_sequences: request.stop_sequences(),
        candidate_count: request.n,
        seed,
        presence_penalty: request.presence_penalty,
        frequency_penalty: request.frequency_penalty,
        response_mime_type,
        response_schema,
        thinking_config: thinking_config(request)?,
    })
}

/// `reasoning_effort` → a thinking budget, with the budgets Google's own
/// OpenAI-compatible endpoint uses for each level.
fn thinking_config(request: &ChatRequest) -> Result<Option<ThinkingConfig>, ProviderError> {
    let Some(effort) = request.extra.get("reasoning_effort").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let thinking_budget = match effort.as_str() {
        Some("none") => 0,
        Some("minimal" | "low") => 1024,
        Some("medium") => 8192,
        Some("high") => 24_576,
        _ => {
            return Err(ProviderError::new(
                ErrorKind::BadRequest,
                format!("reasoning_effort {effort} is not a level"),
            ));
        }
    };
    Ok(Some(ThinkingConfig { thinking_budget }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn request(body: Value) -> ChatRequest {
        serde_json::from_value(body).expect("a valid OpenAI request")
    }

    fn translated(body: Value) -> Value {
        serde_json::to_value(translate(&request(body)).expect("translates")).expect("serializes")
    }

    #[test]
    fn a_tool_conversation_becomes_gemini_turns() {
        let body = json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "user", "content": [
                    {"type": "text", "text": "And this photo:"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.webp?size=large"}}
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "time", "arguments": ""}}
                ]},
                {"role": "tool", "tool_call_id": "call_2", "content": "12:00"},
                {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"},
                {"role": "assistant", "content": "21 °C at noon."}
            ]
        });
        assert_eq!(
            translated(body),
            json!({
                "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Use metric units."}]},
                "contents": [
                    {"role": "user", "parts": [
                        {"text": "Weather in Paris?"},
                        {"text": "And this photo:"},
                        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
                        {"fileData": {"mimeType": "image/webp", "fileUri": "https://example.com/cat.webp?size=large"}}
                    ]},
                    {"role": "model", "parts": [
                        {"functionCall": {"name": "weather", "args": {"city": "Paris"}}, "thoughtSignature": SKIPPED_THOUGHT_SIGNATURE},
                        {"functionCall": {"name": "time", "args": {}}}
                    ]},
                    {"role": "user", "parts": [
                        {"functionResponse": {"name": "time", "response": {"result": "12:00"}}},
                        {"functionResponse": {"name": "weather", "response": {"temp": 21}}}
                    ]},
                    {"role": "model", "parts": [{"text": "21 °C at noon."}]}
                ]
            })
        );
    }

    #[test]
    fn tools_choice_and_generation_settings_are_translated() {
        let body = json!({
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [
                {"type": "function", "function": {"name": "weather", "description": "Weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                   "required": ["city"], "additionalProperties": false}, "strict": true}},
                {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}
            ],
            "tool_choice": {"type": "function", "function": {"name": "weather"}},
            "temperature": 0.2, "top_p": 0.9, "max_tokens": 100, "max_completion_tokens": 50,
            "stop": "END", "n": 2, "seed": 7, "presence_penalty": 0.1, "frequency_penalty": 0.3,
            "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema":
                {"type": "object", "properties": {"t": {"type": ["number", "null"]}}}}},
            "reasoning_effort": "low",
            "user": "u-1"
        });
        let out = translated(body);
        assert_eq!(
            out["tools"],
            json!([{"functionDeclarations": [
                {"name": "weather", "description": "Weather",
                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
                {"name": "now"}
            ]}])
        );
        assert_eq!(
            out["toolConfig"],
            json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["weather"]}})
        );
        assert_eq!(
            out["generationConfig"],
            json!({
                "temperature": 0.2, "topP": 0.9, "maxOutputTokens": 50, "stopSequences": ["END"],
                "candidateCount": 2, "seed": 7, "presencePenalty": 0.1, "frequencyPenalty": 0.3,
                "responseMimeType": "application/json",
                "responseSchema": {"type": "object", "properties": {"t": {"type": "number", "nullable": true}}},
                "thinkingConfig": {"thinkingBudget": 1024}
            })
        );
    }

    #[test]
    fn tool_choice_modes_map_to_gemini_modes() {
        for (choice, mode) in [("auto", "AUTO"), ("none", "NONE"), ("required", "ANY")] {
            let out = translated(
                json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "tool_choice": choice}),
            );
            assert_eq!(
                out["toolConfig"]["functionCallingConfig"],
                json!({"mode": mode}),
                "{choice}"
            );
        }
        let plain = translated(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}));
        assert_eq!(
            plain,
            json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
        );
    }

    #[test]
    fn parameters_gemini_cannot_honour_are_refused_by_name() {
        let cases = [
            json!({"logit_bias": {"50256": -100}}),
            json!({"logprobs": true}),
            json!({"parallel_tool_calls": false}),
            json!({"modalities": ["text", "audio"]}),
            json!({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}]}),
            json!({"response_format": {"type": "grammar"}}),
        ];
        for extra in cases {
            let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
            for (key, value) in extra.as_object().expect("object") {
                body[key] = value.clone();
            }
            let error = translate(&request(body)).expect_err("refused");
            assert_eq!(error.kind, ErrorKind::Unsupported, "{extra}");
            let named = extra.as_object().and_then(|o| o.keys().next()).expect("a key");
            let expected = if named == "messages" {
                "file"
            } else if named == "response_format" {
                "grammar"
            } else {
                named
            };
            assert!(error.message.contains(expected), "{}", error.message);
        }
        let harmless = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "logprobs": false, "parallel_tool_calls": true});
        assert!(translate(&request(harmless)).is_ok());
    }

    #[test]
    fn inconsistent_tool_history_is_a_bad_request() {
        let orphan = json!({"model": "m", "messages": [
            {"role": "user", "content": "hi"},
            {"role": "tool", "tool_call_id": "call_x", "content": "1"}
        ]});
        let error = translate(&request(orphan)).expect_err("orphan result");
        assert_eq!(error.kind, ErrorKind::BadRequest);
        assert!(error.message.contains("call_x"));

        let bad_args = json!({"model": "m", "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}
        ]});
        assert_eq!(
            translate(&request(bad_args)).expect_err("not an object").kind,
            ErrorKind::BadRequest
        );

        let only_system = json!({"model": "m", "messages": [{"role": "system", "content": "x"}]});
        assert_eq!(
            translate(&request(only_system)).expect_err("no turns").kind,
            ErrorKind::BadRequest
        );
    }

    #[test]
    fn mime_types_are_guessed_from_the_url_path() {
        assert_eq!(guess_mime_type("https://x/y/photo.PNG"), "image/png");
        assert_eq!(guess_mime_type("gs://bucket/doc.pdf#page=2"), "application/pdf");
        assert_eq!(guess_mime_type("https://x/render?format=gif"), "image/jpeg");
    }
}
