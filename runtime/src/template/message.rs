//! A conversation as templates see it: roles, contents and per-message loss flags.

use std::fmt;
use std::str::FromStr;

/// Who said a message. ms-swift's `tool_response` is read as `Tool`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    /// The name ms-swift and chat templates use.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one of ours; the caller adds where it was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role '{0}' (expected system, user, assistant or tool)")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "system" => Ok(Role::System),
            "user" => Ok(Role::User),
            "assistant" => Ok(Role::Assistant),
            // ms-swift renames `tool_response` to `tool` in StdTemplateInputs.from_dict.
            "tool" | "tool_response" => Ok(Role::Tool),
            other => Err(UnknownRole(other.to_string())),
        }
    }
}

/// One message. `loss` overrides `--loss_scale` for an assistant message (ms-swift >= 3.8:
/// `"loss": true/false`); it is ignored on other roles, as in ms-swift.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub content: String,
    pub loss: Option<bool>,
}

impl Message {
    /// A message without a loss flag.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
            loss: None,
        }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }

    pub fn tool(content: impl Into<String>) -> Self {
        Self::new(Role::Tool, content)
    }

    /// The same message with an explicit loss flag.
    pub fn with_loss(mut self, loss: bool) -> Self {
        self.loss = Some(loss);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_with_ms_swift_aliases() {
        assert_eq!("tool_response".parse::<Role>(), Ok(Role::Tool));
        assert_eq!("assistant".parse::<Role>(), Ok(Role::Assistant));
        let err = "human".parse::<Role>().unwrap_err();
        assert!(err.to_string().contains("'human'"), "{err}");
    }
}
