//! Argument placeholders of a pool's `command`: `{task_id}`, `{spec}`, `{title}`,
//! `{slot_path}`, `{branch}`, `{runner_id}`, `{context_file}`, substituted per argument in one
//! pass. There is no shell anywhere: a value is always exactly one argument's text.

/// Values substituted for `{name}` in each argument of a pool's command.
pub struct Placeholders<'a> {
    pub task_id: &'a str,
    pub spec: &'a str,
    pub title: &'a str,
    pub slot_path: &'a str,
    pub branch: &'a str,
    pub runner_id: &'a str,
    pub context_file: &'a str,
}

impl Placeholders<'_> {
    fn lookup(&self, name: &str) -> Option<&str> {
        Some(match name {
            "task_id" => self.task_id,
            "spec" => self.spec,
            "title" => self.title,
            "slot_path" => self.slot_path,
            "branch" => self.branch,
            "runner_id" => self.runner_id,
            "context_file" => self.context_file,
            _ => return None,
        })
    }

    /// Substitutes known placeholders in one pass, so a value that itself contains
    /// `{spec}` (a title, say) is inserted verbatim and never expanded again.
    /// Unknown `{…}` sequences are kept as they are.
    pub fn expand(&self, arg: &str) -> String {
        let mut out = String::with_capacity(arg.len());
        let mut rest = arg;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            match after
                .find('}')
                .and_then(|close| self.lookup(&after[..close]).map(|value| (close, value)))
            {
                Some((close, value)) => {
                    out.push_str(value);
                    rest = &after[close + 1..];
                }
                None => {
                    out.push('{');
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placeholders() -> Placeholders<'static> {
        Placeholders {
            task_id: "1.2",
            spec: "chat",
            title: "say {spec} $(rm -rf /)",
            slot_path: "/w/slot1",
            branch: "task/chat/1.2",
            runner_id: "r-1",
            context_file: "/s/ctx.json",
        }
    }

    #[test]
    fn expands_every_known_placeholder() {
        let p = placeholders();
        assert_eq!(
            p.expand("{spec}/{task_id}@{branch} in {slot_path} as {runner_id} {context_file}"),
            "chat/1.2@task/chat/1.2 in /w/slot1 as r-1 /s/ctx.json"
        );
    }

    #[test]
    fn inserted_values_are_not_expanded_again() {
        assert_eq!(
            placeholders().expand("--title={title}"),
            "--title=say {spec} $(rm -rf /)"
        );
    }

    #[test]
    fn unknown_and_unbalanced_braces_are_kept() {
        let p = placeholders();
        assert_eq!(p.expand("{nope} {spec"), "{nope} {spec");
        assert_eq!(p.expand("{{spec}}"), "{chat}");
        assert_eq!(p.expand("json: {}"), "json: {}");
    }
}
