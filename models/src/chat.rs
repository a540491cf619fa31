//! Chat templates: the model's own Jinja template rendered with minijinja, configured like
//! Hugging Face transformers renders it (trim_blocks, lstrip_blocks, Python string methods,
//! `raise_exception`), so the prompt text matches what the model was trained on.

use minijinja::{Environment, ErrorKind, context};
use serde::Serialize;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// A template's source plus the special-token strings templates may refer to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTemplate {
    pub source: String,
    pub bos_token: String,
    pub eos_token: String,
}

/// Why a template did not render; the message is minijinja's (with line information), or the
/// template's own `raise_exception` text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chat template failed: {0}")]
pub struct ChatTemplateError(pub String);

impl ChatTemplate {
    /// Renders `messages`; with `add_generation_prompt` the template appends the opening of the
    /// assistant's turn.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatTemplateError> {
        let mut env = Environment::new();
        // transformers compiles chat templates with these two options; without them
        // whitespace around block tags differs for most real templates
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // templates call Python string methods (.strip(), .startswith(), ...)
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        let describe = |e: minijinja::Error| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            ChatTemplateError(text)
        };
        let template = env.template_from_str(&self.source).map_err(describe)?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(describe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chatml() -> ChatTemplate {
        ChatTemplate {
            source: "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content | trim }}<|im_end|>\n{% endfor %}\
                     {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
                .into(),
            bos_token: "<s>".into(),
            eos_token: "</s>".into(),
        }
    }

    #[test]
    fn renders_turns_and_generation_prompt() {
        let msgs = [ChatMessage::system("be brief"), ChatMessage::user(" hi ")];
        assert_eq!(
            chatml().render(&msgs, true).unwrap(),
            "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert!(
            !chatml()
                .render(&msgs, false)
                .unwrap()
                .ends_with("assistant\n")
        );
    }

    #[test]
    fn python_methods_and_special_tokens_work() {
        let t = ChatTemplate {
            source: "{{ bos_token }}{% for m in messages %}{{ m.content.strip().upper() }}{% if m.role.startswith('u') %}!{% endif %}{% endfor %}{{ eos_token }}".into(),
            bos_token: "<s>".into(),
            eos_token: "</s>".into(),
        };
        assert_eq!(
            t.render(&[ChatMessage::user(" yo ")], false).unwrap(),
            "<s>YO!</s>"
        );
    }

    #[test]
    fn raise_exception_becomes_an_error_with_its_message() {
        let t = ChatTemplate {
            source: "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}".into(),
            bos_token: String::new(),
            eos_token: String::new(),
        };
        let err = t.render(&[ChatMessage::assistant("x")], false).unwrap_err();
        assert!(err.to_string().contains("first must be user"), "{err}");
    }

    #[test]
    fn syntax_errors_are_errors() {
        let t = ChatTemplate {
            source: "{% for %}".into(),
            bos_token: String::new(),
            eos_token: String::new(),
        };
        assert!(t.render(&[], false).is_err());
    }

    #[test]
    fn tojson_is_available() {
        let t = ChatTemplate {
            source: "{{ messages[0] | tojson }}".into(),
            bos_token: String::new(),
            eos_token: String::new(),
        };
        let out = t.render(&[ChatMessage::user("a\"b")], false).unwrap();
        assert!(out.contains(r#""content":"a\"b""#), "{out}");
    }
}
