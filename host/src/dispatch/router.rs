//! Matching a delivery to its route: by source name, then by topic pattern.

/// A topic pattern: exact, a prefix ending in `*`, or `*` for everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicPattern {
    /// Matches this topic only.
    Exact(String),
    /// Matches every topic starting with this.
    Prefix(String),
}

impl TopicPattern {
    /// Parse a pattern from the config.
    pub fn parse(pattern: &str) -> Self {
        match pattern.strip_suffix('*') {
            Some(prefix) => Self::Prefix(prefix.to_string()),
            None => Self::Exact(pattern.to_string()),
        }
    }

    /// Whether `topic` matches.
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Self::Exact(t) => t == topic,
            Self::Prefix(p) => topic.starts_with(p.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(TopicPattern::parse("a.b").matches("a.b"));
        assert!(!TopicPattern::parse("a.b").matches("a.bc"));
        assert!(TopicPattern::parse("a.*").matches("a.x.y"));
        assert!(!TopicPattern::parse("a.*").matches("b.x"));
        assert!(TopicPattern::parse("*").matches("anything"));
    }
}
