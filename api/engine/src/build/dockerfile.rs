//! The classic builder's Dockerfile parser (`docker build` without BuildKit): bytes to a list
//! of instructions, and the word expansion (`$VAR`, `${VAR:-word}`, quotes) that the builder
//! applies to some instructions' arguments.
//!
//! It checks only what is syntactic and cheap: parser directives, known keywords, missing
//! arguments, FROM's shape and ONBUILD's triggers. What an instruction means (which flags it
//! takes, how many arguments, the build itself) belongs to the executor in [`super`].
//!
//! Every byte here comes from a client, so the parser is bounded (1 MiB, 10 000 instructions)
//! and iterative: nesting such as `${A:-${B:-…}}` lives on a heap stack, never the call stack.

use std::iter::Peekable;
use std::str::Chars;

/// dockerd refuses a larger Dockerfile too; it also bounds every cost below.
const MAX_SIZE: usize = 1 << 20;
/// Far above any real Dockerfile, low enough that a hostile one cannot make the executor's
/// per-instruction work (steps, layers) unbounded.
const MAX_INSTRUCTIONS: usize = 10_000;

const KEYWORDS: &[&str] = &[
    "FROM",
    "RUN",
    "CMD",
    "LABEL",
    "MAINTAINER",
    "EXPOSE",
    "ENV",
    "ADD",
    "COPY",
    "ENTRYPOINT",
    "VOLUME",
    "USER",
    "WORKDIR",
    "ARG",
    "ONBUILD",
    "STOPSIGNAL",
    "HEALTHCHECK",
    "SHELL",
];

/// The keywords whose arguments may be a JSON array (the exec form).
const JSON_KEYWORDS: &[&str] = &["RUN", "CMD", "ENTRYPOINT", "SHELL", "COPY", "ADD", "VOLUME"];

/// Parameters a lone `$` may name besides letters and digits (`$@`, `$$`, ...). Docker's
/// lexer looks them up like any name, so an unset one expands to nothing, as it does there.
const SPECIAL_PARAMETERS: &str = "@*#?$!-";

/// Why a Dockerfile, or a word in it, is refused. The text is what the client sees, worded as
/// Docker's classic builder words it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DockerfileError {
    #[error("the Dockerfile is larger than 1 MiB")]
    TooLarge,
    #[error("Dockerfile parse error line {line}: the Dockerfile is not valid UTF-8")]
    NotUtf8 { line: usize },
    #[error("the Dockerfile cannot be empty")]
    Empty,
    #[error("the Dockerfile has more than 10000 instructions")]
    TooManyInstructions,
    #[error("Dockerfile parse error line {line}: only one {name} parser directive can be used")]
    RepeatedDirective { line: usize, name: &'static str },
    #[error(
        "Dockerfile parse error line {line}: invalid escape token '{value}' does not match ` or \\"
    )]
    InvalidEscape { line: usize, value: String },
    #[error("Dockerfile parse error line {line}: unknown instruction: {word}")]
    UnknownInstruction { line: usize, word: String },
    #[error("Dockerfile parse error line {line}: {keyword} requires at least one argument")]
    MissingArgument { line: usize, keyword: String },
    #[error("Dockerfile parse error line {line}: FROM requires either one or three arguments")]
    FromArguments { line: usize },
    #[error(
        "Dockerfile parse error line {line}: when using JSON array syntax, arrays must be \
         comprised of strings only"
    )]
    NotStringArray { line: usize },
    #[error(
        "Dockerfile parse error line {line}: Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"
    )]
    OnbuildChain { line: usize },
    #[error("Dockerfile parse error line {line}: {keyword} isn't allowed as an ONBUILD trigger")]
    OnbuildTrigger { line: usize, keyword: String },
    #[error(
        "failed to process {word:?}: unexpected end of statement while looking for matching \
         {quote}"
    )]
    UnterminatedQuote { word: String, quote: &'static str },
    #[error("failed to process {word:?}: syntax error: missing '}}'")]
    MissingBrace { word: String },
    #[error("failed to process {word:?}: syntax error: bad substitution")]
    BadSubstitution { word: String },
    #[error("failed to process {word:?}: unsupported modifier ({modifier}) in substitution")]
    UnsupportedModifier { word: String, modifier: String },
    #[error("{keyword} names can not be blank")]
    BlankName { keyword: &'static str },
    #[error("Syntax error - can't find = in {word:?}. Must be of the form: name=value")]
    MissingEquals { word: String },
    #[error("{keyword} must have two arguments")]
    MissingValue { keyword: &'static str },
}

/// A parsed Dockerfile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dockerfile {
    /// The escape character (`\` unless a `# escape=` directive says "`").
    pub escape: char,
    pub instructions: Vec<Instruction>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instruction {
    /// 1-based line number where the instruction starts.
    pub line: usize,
    /// The keyword upper-cased: "FROM", "RUN", "COPY", ...
    pub keyword: String,
    /// Leading `--name=value` flags, in order (`COPY --from=build --chown=1:1 ...`,
    /// `FROM --platform=...`, `RUN --mount=...`). A flag without `=` gets value "" (e.g.
    /// `--link`). Only flags that come before the arguments; parsing stops at the first word
    /// not starting with `--` (a bare `--` ends the flags and is dropped).
    pub flags: Vec<(String, String)>,
    pub args: Args,
    /// The instruction as Docker's "Step N/M : <original>" line shows it: the logical line as
    /// written (keyword in its original case), continuation escapes and the line breaks after
    /// them removed, comment lines inside a continuation dropped, surrounding whitespace
    /// trimmed.
    pub original: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Args {
    /// The JSON (exec) form: `["a", "b"]`.
    Json(Vec<String>),
    /// Everything after the keyword and flags, as one string (continuations joined, trimmed).
    Shell(String),
}

/// Parses a Dockerfile as the classic builder reads it.
pub fn parse(text: &[u8]) -> Result<Dockerfile, DockerfileError> {
    if text.len() > MAX_SIZE {
        return Err(DockerfileError::TooLarge);
    }
    let text = std::str::from_utf8(text).map_err(|e| DockerfileError::NotUtf8 {
        line: 1 + text[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count(),
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .zip(1..)
        .peekable();

    let mut escape = '\\';
    let mut seen: Vec<&'static str> = Vec::new();
    while let Some(&(line, number)) = lines.peek() {
        let Some((name, value)) = directive(line) else {
            break;
        };
        // An unknown directive ends the section like any other line (it reads as a comment),
        // so a later `# escape=` in the same block is not honoured, as in Docker.
        let name = match name.to_ascii_lowercase().as_str() {
            "escape" => "escape",
            "syntax" => "syntax",
            _ => break,
        };
        if seen.contains(&name) {
            return Err(DockerfileError::RepeatedDirective { line: number, name });
        }
        seen.push(name);
        if name == "escape" {
            escape = match value {
                "\\" => '\\',
                "`" => '`',
                _ => {
                    return Err(DockerfileError::InvalidEscape {
                        line: number,
                        value: value.to_string(),
                    })
                }
            };
        }
        lines.next();
    }

    let mut instructions = Vec::new();
    while let Some((line, number)) = lines.next() {
        let first = line.trim_start();
        if first.is_empty() || first.starts_with('#') {
            continue;
        }
        let (start, mut continued) = strip_continuation(first, escape);
        let mut logical = start.to_string();
        while continued {
            let Some((next, _)) = lines.next() else {
                break;
            };
            // Comments and blank lines inside a continuation vanish without ending it, so a
            // long RUN can be annotated line by line.
            let content = next.trim_start();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let (part, more) = strip_continuation(next, escape);
            logical.push_str(part);
            continued = more;
        }
        let logical = logical.trim();
        if logical.is_empty() {
            continue;
        }
        if instructions.len() == MAX_INSTRUCTIONS {
            return Err(DockerfileError::TooManyInstructions);
        }
        instructions.push(instruction(number, logical, escape)?);
    }
    if instructions.is_empty() {
        return Err(DockerfileError::Empty);
    }
    Ok(Dockerfile {
        escape,
        instructions,
    })
}

/// `# name=value` (whitespace allowed around each part), or None when the line is not of that
/// form. The name starts with a letter and the value is not empty, as Docker's pattern says.
fn directive(line: &str) -> Option<(&str, &str)> {
    let rest = line.trim_start().strip_prefix('#')?.trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(rest.len());
    let (name, rest) = rest.split_at(end);
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let value = rest.trim_start().strip_prefix('=')?.trim();
    (!value.is_empty()).then_some((name, value))
}

/// Splits off a trailing escape (blanks after it allowed): the text before it, and whether
/// the instruction goes on. What precedes the escape is kept as is: Docker joins the lines
/// without adding or removing spaces, and the Step line shows that.
fn strip_continuation(line: &str, escape: char) -> (&str, bool) {
    match line.trim_end_matches([' ', '\t']).strip_suffix(escape) {
        Some(body) => (body, true),
        None => (line, false),
    }
}

/// The blanks that separate a keyword from its arguments in Docker's parser (Unicode spaces
/// elsewhere stay part of a word there, so they do here).
fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\x0b' | '\x0c' | '\r')
}

fn instruction(line: usize, logical: &str, escape: char) -> Result<Instruction, DockerfileError> {
    let (word, rest) = match logical.find(is_blank) {
        Some(i) => (&logical[..i], logical[i..].trim_start()),
        None => (logical, ""),
    };
    let keyword = word.to_uppercase();
    if !KEYWORDS.contains(&keyword.as_str()) {
        return Err(DockerfileError::UnknownInstruction {
            line,
            word: keyword,
        });
    }
    let (flags, text) = split_flags(rest, escape);
    let text = text.trim();
    if text.is_empty() {
        return Err(DockerfileError::MissingArgument { line, keyword });
    }
    let args = if JSON_KEYWORDS.contains(&keyword.as_str()) && text.starts_with('[') {
        match json_array(text) {
            JsonForm::Strings(v) => Args::Json(v),
            JsonForm::NotStrings => return Err(DockerfileError::NotStringArray { line }),
            JsonForm::Invalid => Args::Shell(text.to_string()),
        }
    } else {
        Args::Shell(text.to_string())
    };
    match keyword.as_str() {
        "FROM" => {
            let ok = match text.split_whitespace().collect::<Vec<_>>().as_slice() {
                [_] => true,
                [_, as_, _] => as_.eq_ignore_ascii_case("as"),
                _ => false,
            };
            if !ok {
                return Err(DockerfileError::FromArguments { line });
            }
        }
        "ONBUILD" => {
            let trigger = text.split_whitespace().next().unwrap_or("").to_uppercase();
            match trigger.as_str() {
                "ONBUILD" => return Err(DockerfileError::OnbuildChain { line }),
                "FROM" | "MAINTAINER" => {
                    return Err(DockerfileError::OnbuildTrigger {
                        line,
                        keyword: trigger,
                    })
                }
                _ => {}
            }
        }
        _ => {}
    }
    Ok(Instruction {
        line,
        keyword,
        flags,
        args,
        original: logical.to_string(),
    })
}

/// The leading `--flag[=value]` words of `rest` (quotes removed, the escape char escaping the
/// next char) and the text after them. A bare `--` ends the flags, so an argument that starts
/// with `--` can still be written.
fn split_flags(rest: &str, escape: char) -> (Vec<(String, String)>, &str) {
    let mut flags = Vec::new();
    let mut remaining = rest;
    loop {
        let start = remaining.trim_start();
        if !start.starts_with("--") {
            return (flags, start);
        }
        let mut word = String::new();
        let mut quote = None;
        let mut end = start.len();
        let mut chars = start.char_indices();
        while let Some((i, c)) = chars.next() {
            match quote {
                None if c.is_whitespace() => {
                    end = i;
                    break;
                }
                None if c == '\'' || c == '"' => quote = Some(c),
                Some(q) if c == q => quote = None,
                _ if c == escape => {
                    if let Some((_, next)) = chars.next() {
                        word.push(next);
                    }
                }
                _ => word.push(c),
            }
        }
        remaining = &start[end..];
        if word == "--" {
            return (flags, remaining.trim_start());
        }
        let flag = word.strip_prefix("--").unwrap_or(&word);
        let (name, value) = flag.split_once('=').unwrap_or((flag, ""));
        flags.push((name.to_string(), value.to_string()));
    }
}

enum JsonForm {
    Strings(Vec<String>),
    /// Valid JSON, but not every element a string: Docker refuses this rather than running
    /// it through a shell.
    NotStrings,
    /// Not JSON: the text is the shell form after all.
    Invalid,
}

/// Reads the JSON array at the start of `text`. Like Docker's decoder it reads one value and
/// ignores what follows it (`CMD ["a"] b` runs `a`). serde_json's nesting limit bounds its
/// recursion.
fn json_array(text: &str) -> JsonForm {
    let mut values = serde_json::Deserializer::from_str(text).into_iter::<Vec<serde_json::Value>>();
    let Some(Ok(values)) = values.next() else {
        return JsonForm::Invalid;
    };
    values
        .into_iter()
        .map(|v| match v {
            serde_json::Value::String(s) => Some(s),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .map_or(JsonForm::NotStrings, JsonForm::Strings)
}

/// Expands `$VAR`, `${VAR}`, `${VAR:-word}`, `${VAR-word}`, `${VAR:+word}`, `${VAR+word}` in
/// `word` (the classic builder's substitution for ADD, COPY, ENV, EXPOSE, FROM, LABEL,
/// STOPSIGNAL, USER, VOLUME, WORKDIR, ARG), and removes quotes as Docker's shell lexer does:
/// inside single quotes nothing is expanded; inside double quotes `$` expands and the escape
/// char escapes only `"`, `$`, the escape char itself (else it is kept literally); outside
/// quotes the escape char escapes the next char. `lookup` gives a variable's value (None:
/// unset; an unset variable expands to "").
///
/// As in Docker, `$1` and the special parameters (`$@`, `$$`, `$#`, ...) are names looked up
/// like any other (so usually expand to ""), while `$` followed by anything else, or by
/// nothing, stays a literal `$`.
///
/// Errors: an unterminated quote or `${`, a bad `${...}` form (e.g. `${VAR:?x}`: unsupported,
/// the error names the modifier).
pub fn expand(
    word: &str,
    escape: char,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, DockerfileError> {
    Lexer::new(word, escape, lookup, false)
        .run()
        .map(|(text, _)| text)
}

/// Splits `text` into words on unquoted whitespace, expanding each word as [`expand`] does
/// (a quoted empty string "" is a word; whitespace inside quotes does not split). As in
/// Docker, the value of an unquoted variable is split on its whitespace too.
pub fn words(
    text: &str,
    escape: char,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<String>, DockerfileError> {
    Lexer::new(text, escape, lookup, true)
        .run()
        .map(|(_, words)| words)
}

/// The `key=value` pairs of ENV, LABEL (and ARG's `name[=default]`), as Docker reads them:
/// - the modern form `K=V K2="v 2" K3=v\ 3`: words split on unquoted whitespace, each split at
///   its first `=`, then key and value each expanded as [`expand`] does (so a value whose
///   variable holds spaces stays one value); a word without `=` is an error.
/// - the legacy form `ENV KEY some value` (first word has no `=`): one pair, key = first word,
///   value = the rest of the text after the blanks following the key, expanded as one word
///   (quotes removed), only when `legacy_allowed`.
///
/// `legacy_allowed` is true exactly for ENV, so errors name ENV when it is set and LABEL when
/// it is not.
pub fn pairs(
    text: &str,
    escape: char,
    legacy_allowed: bool,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, DockerfileError> {
    let keyword = if legacy_allowed { "ENV" } else { "LABEL" };
    let text = text.trim();
    let raw = raw_words(text, escape);
    let Some(first) = raw.first() else {
        return Ok(Vec::new());
    };
    let key = |k: &str| {
        let key = expand(k, escape, lookup)?;
        if key.is_empty() {
            return Err(DockerfileError::BlankName { keyword });
        }
        Ok(key)
    };
    if !first.contains('=') {
        if !legacy_allowed {
            return Err(DockerfileError::MissingEquals {
                word: first.to_string(),
            });
        }
        let Some(i) = text.find(is_blank) else {
            return Err(DockerfileError::MissingValue { keyword });
        };
        let value = text[i..].trim_start_matches(is_blank);
        return Ok(vec![(key(&text[..i])?, expand(value, escape, lookup)?)]);
    }
    raw.into_iter()
        .map(|w| {
            let Some((k, v)) = w.split_once('=') else {
                return Err(DockerfileError::MissingEquals {
                    word: w.to_string(),
                });
            };
            Ok((key(k)?, expand(v, escape, lookup)?))
        })
        .collect()
}

/// Splits on unquoted, unescaped whitespace and keeps each word as written (quotes and
/// escapes in place), so that `=` can be found before expansion, as Docker's parser does.
fn raw_words(text: &str, escape: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = None;
    let mut quote = None;
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        let Some(s) = start else {
            if !c.is_whitespace() {
                start = Some(i);
                match c {
                    '\'' | '"' => quote = Some(c),
                    _ if c == escape => {
                        chars.next();
                    }
                    _ => {}
                }
            }
            continue;
        };
        match quote {
            None if c.is_whitespace() => {
                out.push(&text[s..i]);
                start = None;
            }
            None if c == '\'' || c == '"' => quote = Some(c),
            Some(q) if c == q => quote = None,
            // Single quotes take the escape char literally.
            Some('\'') => {}
            _ if c == escape => {
                chars.next();
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push(&text[s..]);
    }
    out
}

/// A piece of expanded text, by how word splitting treats it.
#[derive(Clone, Copy)]
enum Piece<'a> {
    /// An unquoted character as written: whitespace separates words.
    Char(char),
    /// Quoted or escaped text: part of a word even when empty or blank.
    Quoted(&'a str),
    /// An unquoted variable's value: Docker splits it on its whitespace.
    Value(&'a str),
}

impl Piece<'_> {
    fn push_to(self, out: &mut String) {
        match self {
            Piece::Char(c) => out.push(c),
            Piece::Quoted(s) | Piece::Value(s) => out.push_str(s),
        }
    }
}

/// A construct that is open while the lexer reads on; the innermost is on top of the stack.
enum Frame {
    /// A double-quoted string, what it has produced so far.
    Double(String),
    /// `${name<modifier>word}` while its word is read (the word may itself quote and expand).
    Brace {
        name: String,
        modifier: Modifier,
        word: String,
    },
}

#[derive(Clone, Copy)]
enum Modifier {
    /// `-` (`:-` with `colon`): the word when the variable is unset (or empty).
    Default { colon: bool },
    /// `+` (`:+` with `colon`): the word when the variable is set (and not empty).
    Alternative { colon: bool },
}

/// Words as they form: whitespace from an unquoted source ends the current one.
#[derive(Default)]
struct Words {
    done: Vec<String>,
    word: String,
    /// Whether a word has begun, which a quoted "" does without adding text.
    started: bool,
}

impl Words {
    fn add(&mut self, piece: Piece<'_>) {
        match piece {
            Piece::Char(c) => self.char(c),
            Piece::Value(s) => s.chars().for_each(|c| self.char(c)),
            Piece::Quoted(s) => {
                self.word.push_str(s);
                self.started = true;
            }
        }
    }

    fn char(&mut self, c: char) {
        if !c.is_whitespace() {
            self.word.push(c);
            self.started = true;
        } else if self.started {
            self.done.push(std::mem::take(&mut self.word));
            self.started = false;
        }
    }

    fn finish(mut self) -> Vec<String> {
        if self.started {
            self.done.push(self.word);
        }
        self.done
    }
}

/// Docker's shell lexer as a loop over one char at a time, with the open quotes and `${`
/// forms on an explicit stack.
struct Lexer<'a> {
    input: &'a str,
    chars: Peekable<Chars<'a>>,
    escape: char,
    lookup: &'a dyn Fn(&str) -> Option<String>,
    stack: Vec<Frame>,
    /// What the outermost level has produced.
    text: String,
    /// The outermost level's words, when splitting.
    words: Option<Words>,
}

impl<'a> Lexer<'a> {
    fn new(
        input: &'a str,
        escape: char,
        lookup: &'a dyn Fn(&str) -> Option<String>,
        split: bool,
    ) -> Self {
        Lexer {
            input,
            chars: input.chars().peekable(),
            escape,
            lookup,
            stack: Vec::new(),
            text: String::new(),
            words: split.then(Words::default),
        }
    }

    fn run(mut self) -> Result<(String, Vec<String>), DockerfileError> {
        while let Some(c) = self.chars.next() {
            if let Some(Frame::Double(_)) = self.stack.last() {
                self.double_quoted(c)?;
            } else {
                self.unquoted(c)?;
            }
        }
        match self.stack.last() {
            None => Ok((self.text, self.words.map(Words::finish).unwrap_or_default())),
            Some(Frame::Double(_)) => Err(self.unterminated("double-quote")),
            Some(Frame::Brace { .. }) => Err(self.missing_brace()),
        }
    }

    /// Outside quotes: at the outermost level or in a `${...}` word.
    fn unquoted(&mut self, c: char) -> Result<(), DockerfileError> {
        match c {
            '}' if matches!(self.stack.last(), Some(Frame::Brace { .. })) => self.close_brace(),
            '\'' => {
                let mut quoted = String::new();
                loop {
                    match self.chars.next() {
                        None => return Err(self.unterminated("single-quote")),
                        Some('\'') => break,
                        Some(c) => quoted.push(c),
                    }
                }
                self.emit(Piece::Quoted(&quoted));
            }
            '"' => self.stack.push(Frame::Double(String::new())),
            '$' => self.dollar()?,
            // An escape at the very end escapes nothing and is dropped.
            c if c == self.escape => {
                if let Some(next) = self.chars.next() {
                    self.emit(Piece::Quoted(next.encode_utf8(&mut [0; 4])));
                }
            }
            c => self.emit(Piece::Char(c)),
        }
        Ok(())
    }

    fn double_quoted(&mut self, c: char) -> Result<(), DockerfileError> {
        match c {
            '"' => {
                if let Some(Frame::Double(s)) = self.stack.pop() {
                    self.emit(Piece::Quoted(&s));
                }
            }
            '$' => self.dollar()?,
            c if c == self.escape => match self.chars.peek().copied() {
                Some(next) if next == '"' || next == '$' || next == self.escape => {
                    self.chars.next();
                    self.emit(Piece::Char(next));
                }
                // Kept literally, and the next char is read as usual: `"\n"` stays `\n`.
                Some(_) => self.emit(Piece::Char(c)),
                // The loop ends and reports the open quote.
                None => {}
            },
            c => self.emit(Piece::Char(c)),
        }
        Ok(())
    }

    /// After a `$`.
    fn dollar(&mut self) -> Result<(), DockerfileError> {
        if self.chars.peek() != Some(&'{') {
            let name = self.name();
            if name.is_empty() {
                self.emit(Piece::Value("$"));
            } else {
                let value = (self.lookup)(&name).unwrap_or_default();
                self.emit(Piece::Value(&value));
            }
            return Ok(());
        }
        self.chars.next();
        match self.chars.peek() {
            None => return Err(self.missing_brace()),
            Some('{' | '}' | ':') => return Err(self.bad_substitution()),
            Some(_) => {}
        }
        let name = self.name();
        let modifier = match self.chars.next() {
            None => return Err(self.missing_brace()),
            Some('}') => {
                let value = (self.lookup)(&name).unwrap_or_default();
                self.emit(Piece::Value(&value));
                return Ok(());
            }
            Some(_) if name.is_empty() => return Err(self.bad_substitution()),
            Some(':') => match self.chars.next() {
                None => return Err(self.missing_brace()),
                Some('-') => Modifier::Default { colon: true },
                Some('+') => Modifier::Alternative { colon: true },
                Some(m) => return Err(self.unsupported(format!(":{m}"))),
            },
            Some('-') => Modifier::Default { colon: false },
            Some('+') => Modifier::Alternative { colon: false },
            Some(m) => return Err(self.unsupported(m.to_string())),
        };
        self.stack.push(Frame::Brace {
            name,
            modifier,
            word: String::new(),
        });
        Ok(())
    }

    /// A variable name after `$` or `${`: a run of digits, one special parameter, or letters,
    /// digits and `_`; empty when none of these follows.
    fn name(&mut self) -> String {
        let mut name = String::new();
        match self.chars.peek().copied() {
            Some(c) if c.is_ascii_digit() => {
                while let Some(&d) = self.chars.peek() {
                    if !d.is_ascii_digit() {
                        break;
                    }
                    name.push(d);
                    self.chars.next();
                }
                return name;
            }
            Some(c) if SPECIAL_PARAMETERS.contains(c) => {
                self.chars.next();
                name.push(c);
                return name;
            }
            _ => {}
        }
        while let Some(&c) = self.chars.peek() {
            if !c.is_alphanumeric() && c != '_' {
                break;
            }
            name.push(c);
            self.chars.next();
        }
        name
    }

    /// The `}` of `${name<modifier>word}`: its value goes to the enclosing level.
    fn close_brace(&mut self) {
        let Some(Frame::Brace {
            name,
            modifier,
            word,
        }) = self.stack.pop()
        else {
            return;
        };
        let value = (self.lookup)(&name);
        let set = |colon: bool| match &value {
            None => false,
            Some(v) => !colon || !v.is_empty(),
        };
        let result = match modifier {
            Modifier::Default { colon } if set(colon) => value.unwrap_or_default(),
            Modifier::Default { .. } => word,
            Modifier::Alternative { colon } if set(colon) => word,
            Modifier::Alternative { .. } => String::new(),
        };
        self.emit(Piece::Value(&result));
    }

    /// Adds to the innermost open construct, or to the result (and its words) when none is.
    fn emit(&mut self, piece: Piece<'_>) {
        match self.stack.last_mut() {
            Some(Frame::Double(out) | Frame::Brace { word: out, .. }) => piece.push_to(out),
            None => {
                piece.push_to(&mut self.text);
                if let Some(words) = &mut self.words {
                    words.add(piece);
                }
            }
        }
    }

    fn unterminated(&self, quote: &'static str) -> DockerfileError {
        DockerfileError::UnterminatedQuote {
            word: self.input.to_string(),
            quote,
        }
    }

    fn missing_brace(&self) -> DockerfileError {
        DockerfileError::MissingBrace {
            word: self.input.to_string(),
        }
    }

    fn bad_substitution(&self) -> DockerfileError {
        DockerfileError::BadSubstitution {
            word: self.input.to_string(),
        }
    }

    fn unsupported(&self, modifier: String) -> DockerfileError {
        DockerfileError::UnsupportedModifier {
            word: self.input.to_string(),
            modifier,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "A" => Some("a".into()),
            "EMPTY" => Some(String::new()),
            "SP" => Some("x  y".into()),
            "EQ" => Some("p=q".into()),
            _ => None,
        }
    }

    fn x(word: &str) -> Result<String, DockerfileError> {
        expand(word, '\\', &env)
    }

    fn w(text: &str) -> Vec<String> {
        words(text, '\\', &env).unwrap()
    }

    fn p(text: &str, legacy: bool) -> Result<Vec<(String, String)>, DockerfileError> {
        pairs(text, '\\', legacy, &env)
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn kv(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn one(text: &str) -> Instruction {
        let mut df = parse(text.as_bytes()).unwrap();
        assert_eq!(df.instructions.len(), 1, "{df:?}");
        df.instructions.remove(0)
    }

    fn err(text: &str) -> String {
        parse(text.as_bytes()).unwrap_err().to_string()
    }

    fn shell(s: &str) -> Args {
        Args::Shell(s.to_string())
    }

    fn json(v: &[&str]) -> Args {
        Args::Json(strings(v))
    }

    #[test]
    fn a_simple_dockerfile() {
        let df = parse(b"FROM busybox\nrun echo hi\n\nCMD [\"sh\"]\n").unwrap();
        assert_eq!(df.escape, '\\');
        let got: Vec<_> = df
            .instructions
            .iter()
            .map(|i| {
                (
                    i.line,
                    i.keyword.as_str(),
                    i.args.clone(),
                    i.original.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (1, "FROM", shell("busybox"), "FROM busybox"),
                (2, "RUN", shell("echo hi"), "run echo hi"),
                (4, "CMD", json(&["sh"]), "CMD [\"sh\"]"),
            ]
        );
    }

    #[test]
    fn escape_directive_backtick() {
        let df = parse(b"# escape=`\nFROM x\nRUN dir c:\\ `\n  && echo\n").unwrap();
        assert_eq!(df.escape, '`');
        assert_eq!(df.instructions[1].args, shell("dir c:\\   && echo"));
        assert_eq!(df.instructions[1].line, 3);
    }

    #[test]
    fn directives_are_case_insensitive_and_spaced() {
        let df = parse(b"  #  ESCAPE  =  `  \n# syntax=docker/dockerfile:1\nFROM x").unwrap();
        assert_eq!(df.escape, '`');
        assert_eq!(df.instructions[0].line, 3);
    }

    #[test]
    fn repeated_directive_is_an_error() {
        assert_eq!(
            err("# escape=`\n# escape=\\\nFROM x"),
            "Dockerfile parse error line 2: only one escape parser directive can be used"
        );
        assert_eq!(
            err("# syntax=a\n# syntax=b\nFROM x"),
            "Dockerfile parse error line 2: only one syntax parser directive can be used"
        );
    }

    #[test]
    fn invalid_escape_value_is_an_error() {
        assert_eq!(
            err("# escape=x\nFROM x"),
            "Dockerfile parse error line 1: invalid escape token 'x' does not match ` or \\"
        );
    }

    #[test]
    fn a_directive_after_a_comment_blank_line_or_unknown_directive_is_a_comment() {
        for text in [
            "# hello\n# escape=`\nFROM x",
            "\n# escape=`\nFROM x",
            "# foo=bar\n# escape=`\nFROM x",
            "FROM x\n# escape=`\n",
        ] {
            assert_eq!(parse(text.as_bytes()).unwrap().escape, '\\', "{text:?}");
        }
        // A second escape directive there is no error either: it is only a comment.
        assert!(parse(b"# escape=`\n\n# escape=`\nFROM x").is_ok());
    }

    #[test]
    fn continuation_with_comments_and_blank_lines_inside() {
        let i = one(concat!(
            "RUN apt-get update && \\\n",
            "# a comment\n",
            "   \n",
            "  # indented comment \\\n",
            "    apt-get install x\n",
        ));
        assert_eq!(i.line, 1);
        assert_eq!(i.args, shell("apt-get update &&     apt-get install x"));
        assert_eq!(i.original, "RUN apt-get update &&     apt-get install x");
    }

    #[test]
    fn continuation_escape_may_be_followed_by_blanks() {
        assert_eq!(one("RUN a\\  \t\nb").args, shell("ab"));
    }

    #[test]
    fn continuation_at_end_of_file_ends_the_instruction() {
        let df = parse(b"FROM x\nRUN echo \\").unwrap();
        assert_eq!(df.instructions[1].args, shell("echo"));
        assert_eq!(df.instructions[1].original, "RUN echo");
    }

    #[test]
    fn line_numbers_count_every_physical_line() {
        let df = parse(b"# c\nFROM x\nRUN a \\\n b \\\n c\n\n  LABEL a=b\n").unwrap();
        let lines: Vec<_> = df.instructions.iter().map(|i| i.line).collect();
        assert_eq!(lines, vec![2, 3, 7]);
    }

    #[test]
    fn crlf_and_bom() {
        let df = parse(b"\xef\xbb\xbf# escape=`\r\nFROM x\r\nRUN a `\r\n b\r\n").unwrap();
        assert_eq!(df.escape, '`');
        assert_eq!(df.instructions[0].original, "FROM x");
        assert_eq!(df.instructions[1].args, shell("a  b"));
    }

    #[test]
    fn invalid_utf8_names_its_line() {
        assert_eq!(
            parse(b"FROM x\nRUN \xff\n").unwrap_err(),
            DockerfileError::NotUtf8 { line: 2 }
        );
    }

    #[test]
    fn json_and_shell_forms() {
        assert_eq!(one("CMD [\"a\", \"b c\"]").args, json(&["a", "b c"]));
        assert_eq!(one("ENTRYPOINT  [ ]").args, json(&[]));
        assert_eq!(one("COPY [\"a b\", \"/c\"]").args, json(&["a b", "/c"]));
        assert_eq!(one("VOLUME [\"/v\"]").args, json(&["/v"]));
        assert_eq!(one("SHELL [\"bash\", \"-c\"]").args, json(&["bash", "-c"]));
        assert_eq!(one("RUN echo [\"a\"]").args, shell("echo [\"a\"]"));
        // What follows the array is ignored, as Docker's decoder ignores it.
        assert_eq!(one("CMD [\"a\"] b").args, json(&["a"]));
        // Keywords without an exec form keep the text.
        assert_eq!(one("LABEL [\"a\"]").args, shell("[\"a\"]"));
        assert_eq!(one("HEALTHCHECK CMD [\"a\"]").args, shell("CMD [\"a\"]"));
    }

    #[test]
    fn malformed_json_falls_back_to_the_shell_form() {
        assert_eq!(one("CMD [\"a\", ").args, shell("[\"a\","));
        assert_eq!(one("RUN [ -f x ] && y").args, shell("[ -f x ] && y"));
        assert_eq!(one("CMD ['a']").args, shell("['a']"));
        assert_eq!(one("CMD [\"\\ud800\"]").args, shell("[\"\\ud800\"]"));
    }

    #[test]
    fn a_json_array_of_other_than_strings_is_an_error() {
        assert_eq!(
            err("FROM x\nCMD [\"a\", 1]"),
            "Dockerfile parse error line 2: when using JSON array syntax, arrays must be \
             comprised of strings only"
        );
    }

    #[test]
    fn flags() {
        let i = one("COPY --from=build --chown=\"1:1\" --link  a  /b");
        assert_eq!(
            i.flags,
            kv(&[("from", "build"), ("chown", "1:1"), ("link", "")])
        );
        assert_eq!(i.args, shell("a  /b"));
        assert_eq!(
            i.original,
            "COPY --from=build --chown=\"1:1\" --link  a  /b"
        );

        let i = one("RUN --mount=type=cache,target=/c [\"make\"]");
        assert_eq!(i.flags, kv(&[("mount", "type=cache,target=/c")]));
        assert_eq!(i.args, json(&["make"]));

        // Flags only lead: a later `--x` is an argument.
        let i = one("FROM --platform=linux/amd64 img AS b");
        assert_eq!(i.flags, kv(&[("platform", "linux/amd64")]));
        assert_eq!(i.args, shell("img AS b"));
        assert_eq!(one("RUN echo --x").flags, vec![]);

        // A bare `--` ends the flags.
        let i = one("COPY --chown=1 -- --odd /d");
        assert_eq!(i.flags, kv(&[("chown", "1")]));
        assert_eq!(i.args, shell("--odd /d"));

        // Quotes and escapes inside a flag.
        assert_eq!(
            one("ADD --chmod='7 5'\\ 5 a b").flags,
            kv(&[("chmod", "7 5 5")])
        );
    }

    #[test]
    fn flags_without_arguments_are_missing_arguments() {
        assert_eq!(
            err("RUN --mount=x"),
            "Dockerfile parse error line 1: RUN requires at least one argument"
        );
    }

    #[test]
    fn unknown_instruction() {
        assert_eq!(
            err("FROM x\n\nfoo bar"),
            "Dockerfile parse error line 3: unknown instruction: FOO"
        );
        assert_eq!(
            err("FROM:latest"),
            "Dockerfile parse error line 1: unknown instruction: FROM:LATEST"
        );
    }

    #[test]
    fn empty_dockerfile() {
        for text in [
            "",
            "\n\n",
            "# just a comment\n",
            "# escape=`\n",
            "\u{feff}",
            " \\\n",
        ] {
            assert_eq!(err(text), "the Dockerfile cannot be empty", "{text:?}");
        }
    }

    #[test]
    fn missing_arguments() {
        for kw in KEYWORDS {
            assert_eq!(
                err(&format!("{}  \n", kw.to_lowercase())),
                format!("Dockerfile parse error line 1: {kw} requires at least one argument")
            );
        }
        assert_eq!(
            err("FROM x\nCMD \\\n\n"),
            "Dockerfile parse error line 2: CMD requires at least one argument"
        );
    }

    #[test]
    fn from_takes_one_or_three_arguments() {
        assert!(parse(b"FROM a as b").is_ok());
        for text in ["FROM a b", "FROM a b c", "FROM a AS b c"] {
            assert_eq!(
                err(text),
                "Dockerfile parse error line 1: FROM requires either one or three arguments"
            );
        }
    }

    #[test]
    fn onbuild() {
        let i = one("ONBUILD  run  echo hi");
        assert_eq!(i.keyword, "ONBUILD");
        assert_eq!(i.args, shell("run  echo hi"));
        assert_eq!(one("ONBUILD CMD [\"a\"]").args, shell("CMD [\"a\"]"));
        assert_eq!(
            err("FROM x\nONBUILD onbuild RUN x"),
            "Dockerfile parse error line 2: Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"
        );
        assert_eq!(
            err("ONBUILD from x"),
            "Dockerfile parse error line 1: FROM isn't allowed as an ONBUILD trigger"
        );
        assert_eq!(
            err("ONBUILD MAINTAINER me"),
            "Dockerfile parse error line 1: MAINTAINER isn't allowed as an ONBUILD trigger"
        );
    }

    #[test]
    fn original_keeps_case_and_inner_spacing() {
        let i = one("   Env  A=1 \\\n   B=2   ");
        assert_eq!(i.keyword, "ENV");
        assert_eq!(i.original, "Env  A=1    B=2");
        assert_eq!(i.args, shell("A=1    B=2"));
    }

    #[test]
    fn size_and_count_limits() {
        let big = vec![b' '; MAX_SIZE + 1];
        assert_eq!(
            parse(&big).unwrap_err().to_string(),
            "the Dockerfile is larger than 1 MiB"
        );
        let many = "RUN x\n".repeat(MAX_INSTRUCTIONS);
        assert_eq!(parse(many.as_bytes()).unwrap().instructions.len(), 10_000);
        let too_many = format!("{many}RUN x\n");
        assert_eq!(
            err(&too_many),
            "the Dockerfile has more than 10000 instructions"
        );
    }

    #[test]
    fn deep_nesting_does_not_recurse() {
        let deep = format!("{}x{}", "${A:-".repeat(200_000), "}".repeat(200_000));
        assert_eq!(x(&deep).unwrap(), "a");
        let deep = format!("{}x{}", "${U:-\"".repeat(100_000), "\"}".repeat(100_000));
        assert_eq!(x(&deep).unwrap(), "x");
        let json = format!("CMD {}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(one(&json).args, Args::Shell(json[4..].to_string()));
    }

    #[test]
    fn expand_plain_and_braced_variables() {
        // `$A_` names `A_`: the name runs on through letters, digits and `_`.
        assert_eq!(x("$A-${A}_$A_${EMPTY}|$UNSET|").unwrap(), "a-a_||");
        assert_eq!(x("no vars").unwrap(), "no vars");
        assert_eq!(x("").unwrap(), "");
    }

    #[test]
    fn expand_default_forms() {
        assert_eq!(x("${UNSET:-x}").unwrap(), "x");
        assert_eq!(x("${EMPTY:-x}").unwrap(), "x");
        assert_eq!(x("${A:-x}").unwrap(), "a");
        assert_eq!(x("${UNSET-x}").unwrap(), "x");
        assert_eq!(x("${EMPTY-x}").unwrap(), "");
        assert_eq!(x("${A-x}").unwrap(), "a");
        assert_eq!(x("${UNSET:-}").unwrap(), "");
    }

    #[test]
    fn expand_alternative_forms() {
        assert_eq!(x("${UNSET:+x}").unwrap(), "");
        assert_eq!(x("${EMPTY:+x}").unwrap(), "");
        assert_eq!(x("${A:+x}").unwrap(), "x");
        assert_eq!(x("${UNSET+x}").unwrap(), "");
        assert_eq!(x("${EMPTY+x}").unwrap(), "x");
        assert_eq!(x("${A+x}").unwrap(), "x");
    }

    #[test]
    fn expand_nested_words() {
        assert_eq!(x("${UNSET:-$A/${EMPTY:-d}}").unwrap(), "a/d");
        assert_eq!(x("${UNSET:-\"x }\"}").unwrap(), "x }");
        assert_eq!(x("${UNSET:-'$A'}").unwrap(), "$A");
        assert_eq!(x("${UNSET:-a\\}b}").unwrap(), "a}b");
        assert_eq!(x("\"${UNSET:-q}\"").unwrap(), "q");
    }

    #[test]
    fn expand_quotes() {
        assert_eq!(x("'$A \\n \"'").unwrap(), "$A \\n \"");
        assert_eq!(
            x("\"$A 'b' \\\" \\$ \\\\ \\n\"").unwrap(),
            "a 'b' \" $ \\ \\n"
        );
        assert_eq!(x("a'b'\"c\"d").unwrap(), "abcd");
        assert_eq!(x("\"\"").unwrap(), "");
    }

    #[test]
    fn expand_escapes() {
        assert_eq!(x("\\$A \\\" \\' \\\\ \\a").unwrap(), "$A \" ' \\ a");
        assert_eq!(x("end\\").unwrap(), "end");
        assert_eq!(expand("`$A ``", '`', &env).unwrap(), "$A `");
        assert_eq!(expand("c:\\dir", '`', &env).unwrap(), "c:\\dir");
        assert_eq!(expand("\"`\"`$ `x\"", '`', &env).unwrap(), "\"$ `x");
    }

    #[test]
    fn expand_dollar_without_a_name() {
        assert_eq!(x("$").unwrap(), "$");
        assert_eq!(x("a$").unwrap(), "a$");
        assert_eq!(x("$/x $.").unwrap(), "$/x $.");
        assert_eq!(x("\"$\"").unwrap(), "$");
        assert_eq!(x("5$ ").unwrap(), "5$ ");
    }

    #[test]
    fn expand_digits_and_special_parameters_as_docker_does() {
        assert_eq!(x("$1x").unwrap(), "x");
        assert_eq!(x("$12x").unwrap(), "x");
        assert_eq!(x("$$|$@|$#").unwrap(), "||");
        let one_set = |n: &str| (n == "1").then(|| "one".to_string());
        assert_eq!(expand("$1 ${1}", '\\', &one_set).unwrap(), "one one");
    }

    #[test]
    fn expand_errors() {
        let cases = [
            (
                "${A",
                "failed to process \"${A\": syntax error: missing '}'",
            ),
            ("${", "failed to process \"${\": syntax error: missing '}'"),
            (
                "${A:-x",
                "failed to process \"${A:-x\": syntax error: missing '}'",
            ),
            (
                "${A:",
                "failed to process \"${A:\": syntax error: missing '}'",
            ),
            (
                "${}",
                "failed to process \"${}\": syntax error: bad substitution",
            ),
            (
                "${:-x}",
                "failed to process \"${:-x}\": syntax error: bad substitution",
            ),
            (
                "${ A}",
                "failed to process \"${ A}\": syntax error: bad substitution",
            ),
            (
                "${A:?x}",
                "failed to process \"${A:?x}\": unsupported modifier (:?) in substitution",
            ),
            (
                "${A#x}",
                "failed to process \"${A#x}\": unsupported modifier (#) in substitution",
            ),
            (
                "'abc",
                "failed to process \"'abc\": unexpected end of statement while looking for \
                 matching single-quote",
            ),
            (
                "\"abc\\\"",
                "failed to process \"\\\"abc\\\\\\\"\": unexpected end of statement while \
                 looking for matching double-quote",
            ),
            (
                "${U:-\"x}",
                "failed to process \"${U:-\\\"x}\": unexpected end of statement while \
                 looking for matching double-quote",
            ),
        ];
        for (word, message) in cases {
            assert_eq!(x(word).unwrap_err().to_string(), message, "{word}");
        }
    }

    #[test]
    fn words_split_on_unquoted_whitespace() {
        assert_eq!(w("  a  b\tc "), strings(&["a", "b", "c"]));
        assert_eq!(w("\"a b\" 'c  d' e\\ f"), strings(&["a b", "c  d", "e f"]));
        assert_eq!(w("\"\" x ''"), strings(&["", "x", ""]));
        assert_eq!(w("a\"\"b"), strings(&["ab"]));
        assert_eq!(w(""), Vec::<String>::new());
        assert_eq!(w("   "), Vec::<String>::new());
    }

    #[test]
    fn words_expand_and_split_unquoted_values() {
        assert_eq!(w("$A ${A}b"), strings(&["a", "ab"]));
        assert_eq!(w("$SP \"$SP\""), strings(&["x", "y", "x  y"]));
        assert_eq!(w("$EMPTY $UNSET z"), strings(&["z"]));
        assert_eq!(w("\"$EMPTY\""), strings(&[""]));
        assert_eq!(w("80/tcp ${UNSET:-443}"), strings(&["80/tcp", "443"]));
        assert!(words("'open", '\\', &env).is_err());
    }

    #[test]
    fn pairs_modern_form() {
        assert_eq!(
            p("K=V K2=\"v 2\" K3=v\\ 3 K4= K5=$SP K6=a=b", true).unwrap(),
            kv(&[
                ("K", "V"),
                ("K2", "v 2"),
                ("K3", "v 3"),
                ("K4", ""),
                ("K5", "x  y"),
                ("K6", "a=b"),
            ])
        );
        assert_eq!(
            p("\"a.b\"=\"c d\" ${A}k=$EQ", false).unwrap(),
            kv(&[("a.b", "c d"), ("ak", "p=q")])
        );
        assert_eq!(p("  ", true).unwrap(), vec![]);
    }

    #[test]
    fn pairs_legacy_form() {
        assert_eq!(
            p("KEY some  \"quoted\" $A value ", true).unwrap(),
            kv(&[("KEY", "some  quoted a value")])
        );
        assert_eq!(p("K a=b", true).unwrap(), kv(&[("K", "a=b")]));
        assert_eq!(p("K \"\"", true).unwrap(), kv(&[("K", "")]));
    }

    #[test]
    fn pairs_errors() {
        let e = |text: &str, legacy: bool| p(text, legacy).unwrap_err().to_string();
        assert_eq!(
            e("a b", false),
            "Syntax error - can't find = in \"a\". Must be of the form: name=value"
        );
        assert_eq!(
            e("a=1 b", true),
            "Syntax error - can't find = in \"b\". Must be of the form: name=value"
        );
        assert_eq!(e("=x", true), "ENV names can not be blank");
        assert_eq!(e("a=1 =x", false), "LABEL names can not be blank");
        assert_eq!(e("KEY", true), "ENV must have two arguments");
        assert_eq!(
            e("K=\"open", true),
            "failed to process \"\\\"open\": unexpected end of statement while looking for \
             matching double-quote"
        );
    }
}
