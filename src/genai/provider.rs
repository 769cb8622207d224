//! Provider names: every spelling producers use, mapped to the semconv (>= 1.37)
//! value. See genai-attributes.md, section 5.3.

/// (canonical, aliases). Matching is case-insensitive; an alias ending in `*`
/// matches as a prefix (Vercel AI SDK sends `openai.chat`, `azure-openai...`).
const PROVIDERS: &[(&str, &[&str])] = &[
    ("openai", &["openai", "openai.*"]),
    (
        "azure.ai.openai",
        &[
            "azure.ai.openai",
            "az.ai.openai",
            "azure",
            "azure-openai*",
            "azure_openai",
        ],
    ),
    (
        "azure.ai.inference",
        &["azure.ai.inference", "az.ai.inference", "azure_ai"],
    ),
    ("anthropic", &["anthropic", "anthropic.*"]),
    (
        "aws.bedrock",
        &[
            "aws.bedrock",
            "aws",
            "bedrock",
            "bedrock_converse",
            "amazon-bedrock*",
        ],
    ),
    (
        "gcp.vertex_ai",
        &[
            "gcp.vertex_ai",
            "vertex_ai*",
            "vertexai",
            "google.vertex*",
            "google-vertex*",
        ],
    ),
    (
        "gcp.gemini",
        &[
            "gcp.gemini",
            "gemini",
            "google.generative-ai*",
            "google-generative-ai*",
        ],
    ),
    ("gcp.gen_ai", &["gcp.gen_ai", "google"]),
    (
        "mistral_ai",
        &["mistral_ai", "mistralai", "mistral", "mistral.*"],
    ),
    ("cohere", &["cohere", "cohere.*"]),
    ("groq", &["groq", "groq.*"]),
    ("deepseek", &["deepseek", "deepseek.*"]),
    ("perplexity", &["perplexity", "perplexity.*"]),
    ("x_ai", &["x_ai", "xai", "xai.*"]),
    (
        "ibm.watsonx.ai",
        &["ibm.watsonx.ai", "watsonx", "ibm.watson.ai"],
    ),
    ("together_ai", &["together_ai", "together", "togetherai"]),
    ("fireworks", &["fireworks", "fireworks_ai"]),
    ("openrouter", &["openrouter"]),
    ("hugging_face", &["hugging_face", "huggingface"]),
    ("aleph_alpha", &["aleph_alpha", "alephalpha"]),
    ("moonshot_ai", &["moonshot_ai", "moonshot"]),
    ("vllm", &["vllm"]),
    ("oci_genai", &["oci_genai", "oci"]),
];

/// Names of frameworks that some instrumentations put in the provider field.
/// They say nothing about who served the call, so they read as absent.
const FRAMEWORKS: &[&str] = &[
    "langchain",
    "llama_index",
    "haystack",
    "crewai",
    "litellm",
    "openai_agents",
    "pydantic_ai",
    "google_adk",
    "langgraph",
    "agno",
    "smolagents",
    "mcp",
];

/// Host suffixes of provider APIs, for spans that only name `server.address`.
const HOSTS: &[(&str, &str)] = &[
    ("api.openai.com", "openai"),
    (".openai.azure.com", "azure.ai.openai"),
    (".services.ai.azure.com", "azure.ai.inference"),
    (".inference.ai.azure.com", "azure.ai.inference"),
    ("api.anthropic.com", "anthropic"),
    (".amazonaws.com", "aws.bedrock"),
    ("aiplatform.googleapis.com", "gcp.vertex_ai"),
    ("generativelanguage.googleapis.com", "gcp.gemini"),
    ("api.mistral.ai", "mistral_ai"),
    ("api.cohere.com", "cohere"),
    ("api.cohere.ai", "cohere"),
    ("api.groq.com", "groq"),
    ("api.deepseek.com", "deepseek"),
    ("api.perplexity.ai", "perplexity"),
    ("api.x.ai", "x_ai"),
    ("openrouter.ai", "openrouter"),
];

/// Model-name prefixes that identify a vendor: the last resort.
const MODEL_PREFIXES: &[(&str, &str)] = &[
    ("openai/", "openai"),
    ("anthropic/", "anthropic"),
    ("gpt-", "openai"),
    ("o1", "openai"),
    ("o3", "openai"),
    ("o4-", "openai"),
    ("claude-", "anthropic"),
    ("gemini-", "gcp.gemini"),
    ("anthropic.claude", "aws.bedrock"),
    ("mistral-", "mistral_ai"),
    ("grok-", "x_ai"),
    ("deepseek-", "deepseek"),
];

/// The canonical provider for a raw provider value; `None` for framework names
/// and blanks. Unknown providers are kept, lower-cased.
pub(crate) fn canonical(raw: &str) -> Option<String> {
    let lower = raw.trim().to_ascii_lowercase();
    if lower.is_empty() || FRAMEWORKS.contains(&lower.as_str()) {
        return None;
    }
    for (canonical, aliases) in PROVIDERS {
        let hit = aliases.iter().any(|a| match a.strip_suffix('*') {
            Some(prefix) => lower.starts_with(prefix),
            None => lower == *a,
        });
        if hit {
            return Some((*canonical).to_owned());
        }
    }
    Some(lower)
}

pub(crate) fn from_host(host: &str) -> Option<&'static str> {
    let host = host.trim().to_ascii_lowercase();
    HOSTS
        .iter()
        .find(|(suffix, _)| host == suffix.trim_start_matches('.') || host.ends_with(suffix))
        .map(|(_, p)| *p)
}

pub(crate) fn from_model(model: &str) -> Option<&'static str> {
    let model = model.trim().to_ascii_lowercase();
    MODEL_PREFIXES
        .iter()
        .find(|(prefix, _)| model.starts_with(prefix))
        .map(|(_, p)| *p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_map_to_semconv_names() {
        for (raw, want) in [
            ("OpenAI", "openai"),
            ("openai.responses", "openai"),
            ("az.ai.openai", "azure.ai.openai"),
            ("xai", "x_ai"),
            ("MistralAI", "mistral_ai"),
            ("amazon-bedrock", "aws.bedrock"),
            ("vertex_ai", "gcp.vertex_ai"),
            ("ollama", "ollama"),
        ] {
            assert_eq!(canonical(raw).as_deref(), Some(want), "{raw}");
        }
    }

    #[test]
    fn frameworks_are_not_providers() {
        assert_eq!(canonical("langchain"), None);
        assert_eq!(canonical("  "), None);
    }

    #[test]
    fn hosts_and_models_as_fallbacks() {
        assert_eq!(from_host("myres.openai.azure.com"), Some("azure.ai.openai"));
        assert_eq!(from_host("api.openai.com"), Some("openai"));
        assert_eq!(from_host("localhost"), None);
        assert_eq!(from_model("claude-sonnet-4-5"), Some("anthropic"));
        assert_eq!(from_model("llama3"), None);
    }
}
