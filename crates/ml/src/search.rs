//! MLflow's search grammar: filter strings, `order_by` clauses and page tokens, parsed and
//! applied as MLflow 3 does (`mlflow/utils/search_utils.py`; where MLflow's file and SQL stores
//! differ, the SQL store, which `mlflow server` runs by default).
//!
//! # Filters
//! A filter is comparisons joined by `AND` (no `OR`, no parentheses); keywords are
//! case-insensitive. A comparison is `identifier comparator value`, or `identifier IS [NOT] NULL`.
//! - An identifier is `prefix.key` or a bare `key` (an attribute). Parts are bare words, backticked
//!   names or, after the dot, double-quoted names: ``metrics.`my key` ``, `tags."a b"`. The key is
//!   all after the first dot: `tags.mlflow.runName` is the tag `mlflow.runName`.
//! - Values: `'single'` or `"double"` quoted strings (`''` or `\'` for a quote inside), numbers
//!   (`-1`, `0.5`, `.5`, `1e-3`), and `('a', 'b')` lists for `IN` / `NOT IN`.
//! - `LIKE` (case-sensitive) and `ILIKE` (not): `%` is any run of characters, `_` any one.
//! - A comparison on an absent value is false, `!=` included; `IS NULL` tests absence. NaN compares
//!   as IEEE does (only `!=` holds).
//!
//! # What a [`Searchable`] must answer, per [`Entity`]
//! Keys marked `#` are numeric and must be answered with [`Value::Number`]; aliases are normalised,
//! so `field` sees only the names below.
//! - **Run**: prefixes `metric(s)`, `param(s)`/`parameter(s)`, `tag(s)`, `attribute(s)`/`attr`/`run`,
//!   `dataset(s)`. Attributes `run_id`, `run_name` (MLflow filters on the `mlflow.runName` tag),
//!   `user_id`, `status`, `artifact_uri`, `start_time#`, `end_time#` (`created` → `start_time`;
//!   `run name` → `run_name` in filters). `datasets.name/digest/context` read
//!   [`Searchable::datasets`]. Order: given keys, then `start_time DESC`, `run_id ASC`.
//! - **Experiment**: prefixes `attribute`, `tag(s)`. Attributes `name`, `experiment_id`,
//!   `creation_time#`, `last_update_time#`. Order: given keys (default `creation_time DESC,
//!   experiment_id ASC`), then `experiment_id DESC`; ids that are integers compare as integers.
//! - **RegisteredModel**: prefixes `attribute`, `tag(s)`. Filter on `name`; order by `name`,
//!   `creation_timestamp#`, `last_updated_timestamp#` (`timestamp` is an alias), then `name ASC`.
//! - **ModelVersion**: prefixes `attribute`, `tag(s)`. Filter on `name`, `version_number#`,
//!   `run_id`, `source_path`; order by `name`, `version_number#`, `creation_timestamp#`,
//!   `last_updated_timestamp#` (default `last_updated_timestamp DESC, name ASC, version_number
//!   DESC`), then `name ASC`, `version_number DESC`.
//! - **LoggedModel**: prefixes `attributes`, `metrics`, `params`, `tags`. Attributes `name`,
//!   `model_id`, `model_type`, `status`, `source_run_id`, `creation_timestamp#`,
//!   `last_updated_timestamp#` (aliases `creation_time`, `last_updated_time`). Order by metrics or
//!   attributes, then `creation_timestamp DESC`, `model_id ASC`.
//! - **Trace**: prefixes `attribute(s)`/`trace`, `tag(s)`, `metadata`/`request_metadata`
//!   (answered as [`KeyType::Param`]: traces have no params). Attributes `request_id`, `name`
//!   (MLflow: the `mlflow.traceName` tag), `run_id` (the `mlflow.sourceRun` metadata), `status`,
//!   `client_request_id`, `timestamp_ms#`, `execution_time_ms#`, `end_time_ms#` (aliases without
//!   `_ms`), and for order `experiment_id`. Span, assessment and prompt filters are refused, as is
//!   `RLIKE` (everywhere). Order: given keys, then `timestamp_ms DESC`, `request_id ASC`.
//!
//! Ordering puts absent values last and NaN just before them, in either direction, as MLflow's
//! SQL store does.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_PAD_INDIFFERENT};

/// The kind of a filter's or an order key's identifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    Metric,
    Param,
    Tag,
    Attribute,
    Dataset,
}

/// What a search entity exposes to a filter (a run, an experiment, a registered model, a model
/// version, a logged model, a trace).
pub trait Searchable {
    /// The value of `key` of `kind`: Number for metrics and numeric attributes, Str for the rest;
    /// None when absent.
    fn field(&self, kind: KeyType, key: &str) -> Option<Value<'_>>;
    /// For `datasets.name/digest/context`: every (name, digest, context) of the entity's dataset
    /// inputs.
    fn datasets(&self) -> Vec<(&str, &str, Option<&str>)> {
        Vec::new()
    }
}

/// A field's value as a [`Searchable`] answers it.
#[derive(Clone, Debug, PartialEq)]
pub enum Value<'a> {
    Number(f64),
    Str(Cow<'a, str>),
}

impl Value<'_> {
    fn number(&self) -> Option<f64> {
        match self {
            Value::Number(x) => Some(*x),
            Value::Str(s) => s.trim().parse().ok(),
        }
    }

    fn text(&self) -> Cow<'_, str> {
        match self {
            Value::Str(s) => Cow::Borrowed(s),
            Value::Number(x) if x.fract() == 0.0 && x.abs() < 1e15 => {
                Cow::Owned(format!("{}", *x as i64))
            }
            Value::Number(x) => Cow::Owned(x.to_string()),
        }
    }
}

/// Which entity a filter or an order is parsed for: decides which identifiers and comparators
/// are valid (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entity {
    Run,
    Experiment,
    RegisteredModel,
    ModelVersion,
    LoggedModel,
    Trace,
}

/// The tag that marks a registered model (and its versions) as a prompt.
pub const IS_PROMPT_TAG: &str = "mlflow.prompt.is_prompt";

/// MLflow's `add_prompt_filter_string`: registered model and model version searches exclude
/// prompts (or, with `prompts`, return only them) unless the filter names the prompt tag.
pub fn with_prompt_filter(filter: &str, prompts: bool) -> String {
    if filter.contains(IS_PROMPT_TAG) {
        return filter.to_string();
    }
    let clause = format!(
        "tags.`{IS_PROMPT_TAG}` {} 'true'",
        if prompts { "=" } else { "!=" }
    );
    if filter.trim().is_empty() {
        clause
    } else {
        format!("{filter} AND {clause}")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Like,
    ILike,
    In,
    NotIn,
    IsNull,
    IsNotNull,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Like => "LIKE",
            Op::ILike => "ILIKE",
            Op::In => "IN",
            Op::NotIn => "NOT IN",
            Op::IsNull => "IS NULL",
            Op::IsNotNull => "IS NOT NULL",
        })
    }
}

const NUMERIC_OPS: &[Op] = &[Op::Eq, Op::Ne, Op::Lt, Op::Le, Op::Gt, Op::Ge];
const TEXT_OPS: &[Op] = &[Op::Eq, Op::Ne, Op::Like, Op::ILike];
const PRESENCE_OPS: &[Op] = &[
    Op::Eq,
    Op::Ne,
    Op::Like,
    Op::ILike,
    Op::IsNull,
    Op::IsNotNull,
];
const LIST_OPS: &[Op] = &[Op::Eq, Op::Ne, Op::Like, Op::ILike, Op::In, Op::NotIn];

/// One attribute an entity knows, under one of its names.
#[derive(Clone, Copy)]
struct Attr {
    name: &'static str,
    canonical: &'static str,
    numeric: bool,
    filter: bool,
    order: bool,
    /// Accepts `IN` / `NOT IN`.
    list: bool,
    /// Accepts `LIKE` / `ILIKE`.
    like: bool,
}

const fn text(name: &'static str) -> Attr {
    Attr {
        name,
        canonical: name,
        numeric: false,
        filter: true,
        order: true,
        list: false,
        like: true,
    }
}

const fn num(name: &'static str) -> Attr {
    Attr {
        numeric: true,
        like: false,
        ..text(name)
    }
}

impl Attr {
    const fn list(self) -> Attr {
        Attr { list: true, ..self }
    }
    const fn no_like(self) -> Attr {
        Attr {
            like: false,
            ..self
        }
    }
    const fn alias(self, canonical: &'static str) -> Attr {
        Attr { canonical, ..self }
    }
    const fn filter_only(self) -> Attr {
        Attr {
            order: false,
            ..self
        }
    }
    const fn order_only(self) -> Attr {
        Attr {
            filter: false,
            ..self
        }
    }
}

/// What one entity accepts.
struct Rules {
    name: &'static str,
    /// Each prefix's space-separated spellings, and the key type it names.
    prefixes: &'static [(&'static str, KeyType)],
    /// Prefixes and attributes MLflow knows but this server does not filter on.
    unsupported: &'static [&'static str],
    attrs: &'static [Attr],
    metric_ops: &'static [Op],
    param_ops: &'static [Op],
    tag_ops: &'static [Op],
    /// What `KeyType::Param` is called in messages (a trace's metadata).
    param_word: &'static str,
    order_kinds: &'static [KeyType],
    /// Numeric attribute values must be integers (MLflow's SQL store casts them with `int()`).
    integer_values: bool,
    /// A numeric attribute also accepts a quoted integer (`version_number = '3'`).
    quoted_numbers: bool,
    /// MLflow's SQL store refuses an `order_by` naming one field twice.
    unique_order: bool,
    default_order: &'static [(&'static str, bool)],
    tie_breakers: &'static [(&'static str, bool)],
}

/// The defaults the entities' rules differ from.
const BASE: Rules = Rules {
    name: "",
    prefixes: &[
        ("attribute", KeyType::Attribute),
        ("tag tags", KeyType::Tag),
    ],
    unsupported: &[],
    attrs: &[],
    metric_ops: &[],
    param_ops: &[],
    tag_ops: TEXT_OPS,
    param_word: "param",
    order_kinds: &[KeyType::Attribute],
    integer_values: false,
    quoted_numbers: false,
    unique_order: false,
    default_order: &[],
    tie_breakers: &[],
};

const RUN: Rules = Rules {
    name: "runs",
    prefixes: &[
        ("metric metrics", KeyType::Metric),
        ("parameter parameters param params", KeyType::Param),
        ("tag tags", KeyType::Tag),
        ("attribute attributes attr run", KeyType::Attribute),
        ("dataset datasets", KeyType::Dataset),
    ],
    attrs: &[
        text("run_id").list(),
        text("run_name"),
        text("run name").alias("run_name").filter_only(),
        text("Run name").alias("run_name").filter_only(),
        text("Run Name").alias("run_name").filter_only(),
        text("user_id"),
        text("status"),
        text("artifact_uri"),
        num("start_time"),
        num("end_time"),
        num("created").alias("start_time"),
        num("Created").alias("start_time"),
    ],
    metric_ops: NUMERIC_OPS,
    param_ops: PRESENCE_OPS,
    tag_ops: PRESENCE_OPS,
    order_kinds: &[
        KeyType::Metric,
        KeyType::Param,
        KeyType::Tag,
        KeyType::Attribute,
    ],
    unique_order: true,
    tie_breakers: &[("start_time", false), ("run_id", true)],
    ..BASE
};

const EXPERIMENT: Rules = Rules {
    name: "experiments",
    attrs: &[
        text("name"),
        text("experiment_id").list().no_like(),
        num("creation_time"),
        num("last_update_time"),
    ],
    tag_ops: PRESENCE_OPS,
    integer_values: true,
    default_order: &[("creation_time", false), ("experiment_id", true)],
    tie_breakers: &[("experiment_id", false)],
    ..BASE
};

const REGISTERED_MODEL: Rules = Rules {
    name: "registered models",
    attrs: &[
        text("name").list(),
        num("creation_timestamp").order_only(),
        num("last_updated_timestamp").order_only(),
        num("timestamp")
            .alias("last_updated_timestamp")
            .order_only(),
    ],
    integer_values: true,
    unique_order: true,
    tie_breakers: &[("name", true)],
    ..BASE
};

const MODEL_VERSION: Rules = Rules {
    name: "model versions",
    attrs: &[
        text("name").list(),
        text("run_id").list().filter_only(),
        text("source_path").filter_only(),
        num("version_number"),
        num("creation_timestamp").order_only(),
        num("last_updated_timestamp").order_only(),
    ],
    integer_values: true,
    quoted_numbers: true,
    unique_order: true,
    default_order: &[
        ("last_updated_timestamp", false),
        ("name", true),
        ("version_number", false),
    ],
    tie_breakers: &[("name", true), ("version_number", false)],
    ..BASE
};

const LOGGED_MODEL: Rules = Rules {
    name: "logged models",
    prefixes: &[
        ("attributes", KeyType::Attribute),
        ("metrics", KeyType::Metric),
        ("params", KeyType::Param),
        ("tags", KeyType::Tag),
    ],
    attrs: &[
        text("name").list(),
        text("model_id").list(),
        text("model_type").list(),
        text("status").list(),
        text("source_run_id").list(),
        num("creation_timestamp"),
        num("creation_time").alias("creation_timestamp"),
        num("last_updated_timestamp"),
        num("last_updated_time").alias("last_updated_timestamp"),
    ],
    metric_ops: NUMERIC_OPS,
    param_ops: LIST_OPS,
    tag_ops: LIST_OPS,
    order_kinds: &[KeyType::Metric, KeyType::Attribute],
    tie_breakers: &[("creation_timestamp", false), ("model_id", true)],
    ..BASE
};

const TRACE: Rules = Rules {
    name: "traces",
    prefixes: &[
        ("attribute attributes trace", KeyType::Attribute),
        ("tag tags", KeyType::Tag),
        ("metadata request_metadata", KeyType::Param),
    ],
    unsupported: &["span", "feedback", "expectation", "issue", "prompt", "text"],
    attrs: &[
        text("request_id").list(),
        text("status").list(),
        text("client_request_id").list().filter_only(),
        num("timestamp_ms"),
        num("timestamp").alias("timestamp_ms"),
        num("execution_time_ms"),
        num("execution_time").alias("execution_time_ms"),
        num("end_time_ms"),
        num("end_time").alias("end_time_ms"),
        text("experiment_id").order_only(),
        text("name").list(),
        text("run_id").list(),
    ],
    param_ops: PRESENCE_OPS,
    tag_ops: PRESENCE_OPS,
    param_word: "metadata",
    order_kinds: &[KeyType::Attribute, KeyType::Tag, KeyType::Param],
    unique_order: true,
    tie_breakers: &[("timestamp_ms", false), ("request_id", true)],
    ..BASE
};

fn rules(entity: Entity) -> &'static Rules {
    match entity {
        Entity::Run => &RUN,
        Entity::Experiment => &EXPERIMENT,
        Entity::RegisteredModel => &REGISTERED_MODEL,
        Entity::ModelVersion => &MODEL_VERSION,
        Entity::LoggedModel => &LOGGED_MODEL,
        Entity::Trace => &TRACE,
    }
}

fn describe(rules: &Rules, kind: KeyType) -> &'static str {
    match kind {
        KeyType::Metric => "metric",
        KeyType::Param => rules.param_word,
        KeyType::Tag => "tag",
        KeyType::Attribute => "attribute",
        KeyType::Dataset => "dataset field",
    }
}

fn join<T: fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Resolves an identifier's parts to (kind, canonical key, attribute spec).
fn resolve<'r>(
    rules: &'r Rules,
    parts: &[String],
    text: &str,
    order: bool,
) -> Result<(KeyType, String, Option<&'r Attr>), String> {
    let (kind, key) = match parts {
        [key] => (KeyType::Attribute, key.clone()),
        [prefix, rest @ ..] => {
            if rules.unsupported.contains(&prefix.as_str()) {
                return Err(format!(
                    "filtering {} on '{prefix}' is not supported by this server",
                    rules.name
                ));
            }
            let found = rules
                .prefixes
                .iter()
                .find(|(names, _)| names.split(' ').any(|n| n == prefix));
            let Some(&(_, kind)) = found else {
                let valid = join(
                    rules
                        .prefixes
                        .iter()
                        .flat_map(|(names, _)| names.split(' ')),
                );
                return Err(format!(
                    "invalid entity type '{prefix}' in '{text}': expected one of {valid}"
                ));
            };
            (kind, rest.join("."))
        }
        [] => return Err("expected an identifier".to_string()),
    };
    if key.is_empty() {
        return Err(format!("empty key in '{text}'"));
    }
    match kind {
        KeyType::Attribute => {
            if rules.unsupported.contains(&key.as_str()) {
                return Err(format!(
                    "filtering {} on '{key}' is not supported by this server",
                    rules.name
                ));
            }
            let usable = |a: &&Attr| if order { a.order } else { a.filter };
            match rules.attrs.iter().filter(usable).find(|a| a.name == key) {
                Some(a) => Ok((kind, a.canonical.to_string(), Some(a))),
                None => {
                    let valid = join(rules.attrs.iter().filter(usable).map(|a| a.name));
                    Err(format!(
                        "invalid attribute key '{key}' in '{text}': valid keys are {valid}"
                    ))
                }
            }
        }
        KeyType::Dataset if !["name", "digest", "context"].contains(&key.as_str()) => Err(format!(
            "invalid dataset key '{key}' in '{text}': valid keys are name, digest, context"
        )),
        _ => Ok((kind, key, None)),
    }
}

fn allowed_ops(rules: &Rules, kind: KeyType, attr: Option<&Attr>) -> Vec<Op> {
    let mut ops = match (kind, attr) {
        (KeyType::Tag, _) => rules.tag_ops.to_vec(),
        (KeyType::Metric, _) => rules.metric_ops.to_vec(),
        (KeyType::Param, _) => rules.param_ops.to_vec(),
        (KeyType::Dataset, _) => LIST_OPS.to_vec(),
        (KeyType::Attribute, Some(a)) if a.numeric => NUMERIC_OPS.to_vec(),
        (KeyType::Attribute, Some(a)) if a.like => TEXT_OPS.to_vec(),
        (KeyType::Attribute, _) => vec![Op::Eq, Op::Ne],
    };
    if attr.is_some_and(|a| a.list) {
        ops.extend([Op::In, Op::NotIn]);
    }
    ops
}

// ---------------------------------------------------------------------------------------------
// Tokens

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    /// A dotted name; `quoted` when any part was backticked or double-quoted.
    Name {
        parts: Vec<String>,
        quoted: bool,
    },
    Str(String),
    /// A double-quoted string: a value, or a name on the left of a comparison.
    DStr(String),
    Num(f64),
    Cmp(String),
    LParen,
    RParen,
    Comma,
}

#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    /// The source text, for messages.
    text: String,
}

impl Token {
    fn is_word(&self, word: &str) -> bool {
        matches!(&self.tok, Tok::Name { parts, quoted: false } if parts.len() == 1 && parts[0].eq_ignore_ascii_case(word))
    }
}

const KEYWORDS: &[&str] = &["AND", "OR", "NOT", "IN", "IS", "NULL", "LIKE", "ILIKE"];

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn lex(src: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = src.chars().collect();
    let at = |i: usize| chars.get(i).copied();
    let digit_at = |i: usize| at(i).is_some_and(|c| c.is_ascii_digit());
    let mut toks = Vec::new();
    let mut i = 0;
    while let Some(c) = at(i) {
        let start = i;
        let tok = if c.is_whitespace() {
            i += 1;
            continue;
        } else if c == '\'' || c == '"' {
            let s = quoted(&chars, &mut i)?;
            if c == '\'' { Tok::Str(s) } else { Tok::DStr(s) }
        } else if digit_at(i)
            || (c == '.' && digit_at(i + 1))
            || (c == '-' && (digit_at(i + 1) || (at(i + 1) == Some('.') && digit_at(i + 2))))
        {
            i += usize::from(c == '-');
            while digit_at(i) {
                i += 1;
            }
            if at(i) == Some('.') {
                i += 1;
                while digit_at(i) {
                    i += 1;
                }
            }
            if matches!(at(i), Some('e' | 'E'))
                && (digit_at(i + 1) || (matches!(at(i + 1), Some('+' | '-')) && digit_at(i + 2)))
            {
                i += 2;
                while digit_at(i) {
                    i += 1;
                }
            }
            let literal: String = chars[start..i].iter().collect();
            if at(i).is_some_and(is_word_char) {
                let end = (i..chars.len())
                    .find(|&j| !is_word_char(chars[j]))
                    .unwrap_or(chars.len());
                return Err(format!(
                    "invalid number '{}'",
                    chars[start..end].iter().collect::<String>()
                ));
            }
            Tok::Num(
                literal
                    .parse()
                    .map_err(|_| format!("invalid number '{literal}'"))?,
            )
        } else if c.is_alphabetic() || c == '_' || c == '`' {
            let mut parts = Vec::new();
            let mut was_quoted = false;
            loop {
                match at(i) {
                    Some('`') => {
                        let close = (i + 1..chars.len()).find(|&j| chars[j] == '`');
                        let Some(close) = close else {
                            return Err(format!("unterminated backtick-quoted name at offset {i}"));
                        };
                        parts.push(chars[i + 1..close].iter().collect());
                        i = close + 1;
                        was_quoted = true;
                    }
                    Some('"') if !parts.is_empty() => {
                        parts.push(quoted(&chars, &mut i)?);
                        was_quoted = true;
                    }
                    Some(c) if is_word_char(c) => {
                        let begin = i;
                        while at(i).is_some_and(is_word_char) {
                            i += 1;
                        }
                        parts.push(chars[begin..i].iter().collect());
                    }
                    _ => {
                        let name: String = chars[start..i].iter().collect();
                        return Err(format!("expected a name after '{name}'"));
                    }
                }
                if at(i) != Some('.') {
                    break;
                }
                i += 1;
            }
            Tok::Name {
                parts,
                quoted: was_quoted,
            }
        } else if "<>=!".contains(c) {
            while at(i).is_some_and(|c| "<>=!".contains(c)) {
                i += 1;
            }
            Tok::Cmp(chars[start..i].iter().collect())
        } else if let Some(tok) = match c {
            '(' => Some(Tok::LParen),
            ')' => Some(Tok::RParen),
            ',' => Some(Tok::Comma),
            _ => None,
        } {
            i += 1;
            tok
        } else {
            return Err(format!(
                "unexpected character '{c}' at offset {i}; quote names with special characters in backticks, e.g. metrics.`my-metric`"
            ));
        };
        toks.push(Token {
            tok,
            text: chars[start..i].iter().collect(),
        });
    }
    Ok(toks)
}

/// Reads the quoted string at `chars[*i]`, leaving `*i` after its closing quote. A doubled quote
/// or a backslash before a quote or a backslash stands for that character.
fn quoted(chars: &[char], i: &mut usize) -> Result<String, String> {
    let start = *i;
    let q = chars[start];
    let mut out = String::new();
    let mut j = start + 1;
    while let Some(&c) = chars.get(j) {
        let next = chars.get(j + 1).copied();
        if c == '\\' && (next == Some(q) || next == Some('\\')) {
            out.push(chars[j + 1]);
            j += 2;
        } else if c == q && next == Some(q) {
            out.push(q);
            j += 2;
        } else if c == q {
            *i = j + 1;
            return Ok(out);
        } else {
            out.push(c);
            j += 1;
        }
    }
    Err(format!(
        "unterminated string starting at offset {start}: {}",
        chars[start..].iter().collect::<String>()
    ))
}

// ---------------------------------------------------------------------------------------------
// Filters

#[derive(Clone, Debug, PartialEq)]
enum Operand {
    None,
    Number(f64),
    Text(String),
    List(Vec<String>),
}

#[derive(Clone, Debug, PartialEq)]
struct Clause {
    kind: KeyType,
    key: String,
    numeric: bool,
    op: Op,
    value: Operand,
}

/// A parsed filter: the AND of its clauses.
#[derive(Clone, Debug, PartialEq)]
pub struct Filter {
    entity: Entity,
    clauses: Vec<Clause>,
}

struct Parser {
    toks: std::vec::IntoIter<Token>,
}

impl Parser {
    fn comparison(&mut self, rules: &Rules, first: Token) -> Result<Clause, String> {
        let ident = first.text.clone();
        let parts = match first.tok {
            Tok::Name { parts, quoted } => {
                if !quoted
                    && parts.len() == 1
                    && KEYWORDS.iter().any(|k| parts[0].eq_ignore_ascii_case(k))
                {
                    return Err(format!(
                        "expected an identifier such as metrics.acc, found keyword '{ident}'"
                    ));
                }
                parts
            }
            Tok::DStr(s) => vec![s],
            Tok::LParen => {
                return Err(
                    "parentheses are not supported: a filter is comparisons joined by AND".into(),
                );
            }
            _ => {
                return Err(format!(
                    "expected an identifier such as metrics.acc or tags.`my key`, found '{ident}'"
                ));
            }
        };
        let (kind, key, attr) = resolve(rules, &parts, &ident, false)?;
        let op = self.comparator(&ident)?;
        let allowed = allowed_ops(rules, kind, attr);
        if !allowed.contains(&op) {
            let what = describe(rules, kind);
            return Err(format!(
                "invalid comparator '{op}' for {what} '{ident}': expected one of {}",
                join(&allowed)
            ));
        }
        let numeric = attr.map_or(kind == KeyType::Metric, |a| a.numeric);
        let value = match op {
            Op::IsNull | Op::IsNotNull => Operand::None,
            _ => self.operand(rules, op, kind, numeric, &ident)?,
        };
        Ok(Clause {
            kind,
            key,
            numeric,
            op,
            value,
        })
    }

    fn comparator(&mut self, ident: &str) -> Result<Op, String> {
        let Some(tok) = self.toks.next() else {
            return Err(format!("expected a comparator after '{ident}'"));
        };
        if let Tok::Cmp(s) = &tok.tok {
            return match s.as_str() {
                "=" => Ok(Op::Eq),
                "!=" => Ok(Op::Ne),
                "<" => Ok(Op::Lt),
                "<=" => Ok(Op::Le),
                ">" => Ok(Op::Gt),
                ">=" => Ok(Op::Ge),
                _ => Err(format!("invalid comparator '{s}' after '{ident}'")),
            };
        }
        let word = |w: &str| tok.is_word(w);
        if word("LIKE") {
            Ok(Op::Like)
        } else if word("ILIKE") {
            Ok(Op::ILike)
        } else if word("IN") {
            Ok(Op::In)
        } else if word("NOT") {
            match self.toks.next() {
                Some(t) if t.is_word("IN") => Ok(Op::NotIn),
                Some(t) => Err(format!(
                    "'NOT {}' is not supported after '{ident}': only NOT IN",
                    t.text
                )),
                None => Err(format!("expected IN after '{ident} NOT'")),
            }
        } else if word("IS") {
            let next = self.toks.next();
            match next {
                Some(t) if t.is_word("NULL") => Ok(Op::IsNull),
                Some(t)
                    if t.is_word("NOT") && self.toks.next().is_some_and(|t| t.is_word("NULL")) =>
                {
                    Ok(Op::IsNotNull)
                }
                _ => Err(format!("expected NULL or NOT NULL after '{ident} IS'")),
            }
        } else if word("RLIKE") {
            Err(format!(
                "comparator 'RLIKE' after '{ident}' is not supported by this server; use LIKE or ILIKE"
            ))
        } else {
            Err(format!(
                "expected a comparator after '{ident}', found '{}'",
                tok.text
            ))
        }
    }

    fn operand(
        &mut self,
        rules: &Rules,
        op: Op,
        kind: KeyType,
        numeric: bool,
        ident: &str,
    ) -> Result<Operand, String> {
        let Some(tok) = self.toks.next() else {
            return Err(format!("expected a value after '{ident} {op}'"));
        };
        if matches!(op, Op::In | Op::NotIn) {
            if tok.tok != Tok::LParen {
                return Err(format!(
                    "expected a list such as ('a', 'b') after '{ident} {op}', found '{}'",
                    tok.text
                ));
            }
            return self.list(ident).map(Operand::List);
        }
        let what = describe(rules, kind);
        match tok.tok {
            Tok::Num(x) if numeric => {
                if rules.integer_values && kind == KeyType::Attribute && x.fract() != 0.0 {
                    return Err(format!(
                        "expected an integer value for '{ident}', found '{}'",
                        tok.text
                    ));
                }
                Ok(Operand::Number(x))
            }
            Tok::Str(s) | Tok::DStr(s) if numeric && rules.quoted_numbers => {
                match s.trim().parse::<i64>() {
                    Ok(n) => Ok(Operand::Number(n as f64)),
                    Err(_) => Err(format!(
                        "expected an integer value for '{ident}', found '{}'",
                        tok.text
                    )),
                }
            }
            _ if numeric => Err(format!(
                "expected a numeric value for {what} '{ident}', found '{}'",
                tok.text
            )),
            Tok::Str(s) | Tok::DStr(s) => Ok(Operand::Text(s)),
            Tok::LParen => Err(format!(
                "a list is only valid with IN or NOT IN, found after '{ident} {op}'"
            )),
            _ => Err(format!(
                "expected a quoted string value for {what} '{ident}' (e.g. 'my-value'), found '{}'",
                tok.text
            )),
        }
    }

    fn list(&mut self, ident: &str) -> Result<Vec<String>, String> {
        let unterminated = || format!("unterminated list after '{ident}': expected ')'");
        let mut items = Vec::new();
        loop {
            let tok = self.toks.next().ok_or_else(unterminated)?;
            match tok.tok {
                Tok::RParen => break,
                Tok::Str(s) | Tok::DStr(s) => {
                    items.push(s);
                    let sep = self.toks.next().ok_or_else(unterminated)?;
                    match sep.tok {
                        Tok::RParen => break,
                        Tok::Comma => {}
                        _ => {
                            return Err(format!(
                                "expected ',' or ')' in the list for '{ident}', found '{}'",
                                sep.text
                            ));
                        }
                    }
                }
                _ => {
                    return Err(format!(
                        "a list holds quoted strings only; found '{}' in the list for '{ident}'",
                        tok.text
                    ));
                }
            }
        }
        if items.is_empty() {
            return Err(format!(
                "the list for '{ident}' is empty: expected at least one quoted string"
            ));
        }
        Ok(items)
    }
}

impl Filter {
    /// Parses `text` for `entity`; an empty or blank filter matches everything.
    pub fn parse(entity: Entity, text: &str) -> Result<Filter, String> {
        let rules = rules(entity);
        let mut parser = Parser {
            toks: lex(text)?.into_iter(),
        };
        let mut clauses = Vec::new();
        while let Some(first) = parser.toks.next() {
            clauses.push(parser.comparison(rules, first)?);
            let Some(tok) = parser.toks.next() else { break };
            if tok.is_word("AND") {
                if parser.toks.as_slice().is_empty() {
                    return Err(format!(
                        "filter ends with '{}': expected a comparison after it",
                        tok.text
                    ));
                }
            } else if tok.is_word("OR") {
                return Err(format!(
                    "'{}' is not supported: a filter is comparisons joined by AND",
                    tok.text
                ));
            } else {
                return Err(format!(
                    "expected AND between comparisons, found '{}'",
                    tok.text
                ));
            }
        }
        Ok(Filter { entity, clauses })
    }

    /// Whether the filter has no clauses (matches everything).
    pub fn is_empty(&self) -> bool {
        self.clauses.is_empty()
    }

    pub fn matches(&self, item: &impl Searchable) -> bool {
        self.clauses.iter().all(|c| self.clause_matches(c, item))
    }

    /// For pruning: the values `key` of `kind` must take in any match, from its `=` and `IN`
    /// clauses (intersected); None when no such clause constrains it.
    pub fn pinned_values(&self, kind: KeyType, key: &str) -> Option<Vec<&str>> {
        let mut pinned: Option<Vec<&str>> = None;
        for c in self
            .clauses
            .iter()
            .filter(|c| c.kind == kind && c.key == key)
        {
            let values: Vec<&str> = match (c.op, &c.value) {
                (Op::Eq, Operand::Text(v)) => vec![v.as_str()],
                (Op::In, Operand::List(vs)) => vs.iter().map(String::as_str).collect(),
                _ => continue,
            };
            pinned = Some(match pinned {
                None => values,
                Some(prev) => prev.into_iter().filter(|v| values.contains(v)).collect(),
            });
        }
        pinned
    }

    fn clause_matches(&self, c: &Clause, item: &impl Searchable) -> bool {
        if c.kind == KeyType::Dataset {
            return item.datasets().into_iter().any(|(name, digest, context)| {
                let lhs = match c.key.as_str() {
                    "name" => Some(name),
                    "digest" => Some(digest),
                    _ => context,
                };
                lhs.is_some_and(|lhs| test_text(c.op, lhs, &c.value))
            });
        }
        let lhs = item.field(c.kind, &c.key);
        match (c.op, lhs) {
            (Op::IsNull, lhs) => lhs.is_none(),
            (Op::IsNotNull, lhs) => lhs.is_some(),
            (_, None) => self.absent_matches(c),
            (_, Some(lhs)) if c.numeric => {
                lhs.number().is_some_and(|x| test_number(c.op, x, &c.value))
            }
            (_, Some(lhs)) => test_text(c.op, &lhs.text(), &c.value),
        }
    }

    /// MLflow reads an absent prompt tag on a registered model or version as `'false'`.
    fn absent_matches(&self, c: &Clause) -> bool {
        matches!(self.entity, Entity::RegisteredModel | Entity::ModelVersion)
            && c.kind == KeyType::Tag
            && c.key == IS_PROMPT_TAG
            && match (c.op, &c.value) {
                (Op::Eq, Operand::Text(v)) => v == "false",
                (Op::Ne, Operand::Text(v)) => v == "true",
                _ => false,
            }
    }
}

fn test_number(op: Op, lhs: f64, value: &Operand) -> bool {
    let Operand::Number(v) = *value else {
        return false;
    };
    match op {
        Op::Eq => lhs == v,
        Op::Ne => lhs != v,
        Op::Lt => lhs < v,
        Op::Le => lhs <= v,
        Op::Gt => lhs > v,
        Op::Ge => lhs >= v,
        _ => false,
    }
}

fn test_text(op: Op, lhs: &str, value: &Operand) -> bool {
    match (op, value) {
        (Op::Eq, Operand::Text(v)) => lhs == v,
        (Op::Ne, Operand::Text(v)) => lhs != v,
        (Op::Like, Operand::Text(v)) => like(lhs, v, false),
        (Op::ILike, Operand::Text(v)) => like(lhs, v, true),
        (Op::In, Operand::List(vs)) => vs.iter().any(|v| v == lhs),
        (Op::NotIn, Operand::List(vs)) => !vs.iter().any(|v| v == lhs),
        _ => false,
    }
}

/// SQL `LIKE` over the whole of `text`: `%` matches any run of characters, `_` any one.
fn like(text: &str, pattern: &str, fold_case: bool) -> bool {
    let chars = |s: &str| -> Vec<char> {
        if fold_case {
            s.to_lowercase().chars().collect()
        } else {
            s.chars().collect()
        }
    };
    let (t, p) = (chars(text), chars(pattern));
    let (mut ti, mut pi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '%' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && (p[pi] == '_' || p[pi] == t[ti]) {
            ti += 1;
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '%')
}

// ---------------------------------------------------------------------------------------------
// Order

#[derive(Clone, Debug, PartialEq)]
struct OrderKey {
    kind: KeyType,
    key: String,
    ascending: bool,
}

/// A parsed `order_by`: the given keys, then the entity's tie-breakers.
#[derive(Clone, Debug, PartialEq)]
pub struct OrderBy {
    keys: Vec<OrderKey>,
}

impl OrderBy {
    /// Parses clauses such as `metrics.acc DESC`, `attributes.start_time`, `name ASC`.
    pub fn parse(entity: Entity, clauses: &[String]) -> Result<OrderBy, String> {
        let rules = rules(entity);
        let mut keys = Vec::new();
        for clause in clauses {
            let key = parse_order_clause(rules, clause)?;
            if rules.unique_order
                && keys
                    .iter()
                    .any(|k: &OrderKey| k.kind == key.kind && k.key == key.key)
            {
                return Err(format!(
                    "`order_by` contains duplicate fields: '{clause}' repeats an earlier field"
                ));
            }
            keys.push(key);
        }
        let attr_key = |&(key, ascending): &(&str, bool)| OrderKey {
            kind: KeyType::Attribute,
            key: key.to_string(),
            ascending,
        };
        if keys.is_empty() {
            keys.extend(rules.default_order.iter().map(attr_key));
        }
        for tie in rules.tie_breakers {
            if !keys
                .iter()
                .any(|k| k.kind == KeyType::Attribute && k.key == tie.0)
            {
                keys.push(attr_key(tie));
            }
        }
        Ok(OrderBy { keys })
    }

    pub fn compare(&self, a: &impl Searchable, b: &impl Searchable) -> Ordering {
        self.keys
            .iter()
            .map(|k| {
                let integer_ids = k.kind == KeyType::Attribute && k.key == "experiment_id";
                compare_values(
                    a.field(k.kind, &k.key),
                    b.field(k.kind, &k.key),
                    k.ascending,
                    integer_ids,
                )
            })
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    }
}

fn parse_order_clause(rules: &Rules, clause: &str) -> Result<OrderKey, String> {
    let bad = |why: String| format!("invalid order_by clause '{clause}': {why}");
    let mut toks = lex(clause).map_err(bad)?.into_iter();
    let Some(first) = toks.next() else {
        return Err(bad("expected a field such as metrics.acc".into()));
    };
    let parts = match first.tok {
        Tok::Name { parts, .. } => parts,
        Tok::DStr(s) => vec![s],
        _ => {
            return Err(bad(format!(
                "expected a field such as metrics.acc, found '{}'",
                first.text
            )));
        }
    };
    let ascending = match toks.next() {
        None => true,
        Some(t) if t.is_word("ASC") => true,
        Some(t) if t.is_word("DESC") => false,
        Some(t) => {
            return Err(bad(format!(
                "expected ASC or DESC after '{}', found '{}'",
                first.text, t.text
            )));
        }
    };
    if let Some(t) = toks.next() {
        return Err(bad(format!("unexpected '{}' after the direction", t.text)));
    }
    let (kind, key, _) = resolve(rules, &parts, &first.text, true).map_err(bad)?;
    if !rules.order_kinds.contains(&kind) {
        return Err(bad(format!(
            "{} cannot be ordered by {} '{}'",
            rules.name,
            describe(rules, kind),
            first.text
        )));
    }
    Ok(OrderKey {
        kind,
        key,
        ascending,
    })
}

/// Present values in the key's direction, then NaN, then absent values, whatever the direction.
fn compare_values(
    a: Option<Value<'_>>,
    b: Option<Value<'_>>,
    ascending: bool,
    integer_ids: bool,
) -> Ordering {
    fn rank(v: &Option<Value<'_>>) -> u8 {
        match v {
            None => 2,
            Some(Value::Number(x)) if x.is_nan() => 1,
            Some(_) => 0,
        }
    }
    let (ra, rb) = (rank(&a), rank(&b));
    let (Some(a), Some(b), 0, 0) = (a, b, ra, rb) else {
        return ra.cmp(&rb);
    };
    let by_number = |x: f64, y: &str| {
        y.parse::<f64>().map_or(Ordering::Less, |y| {
            x.partial_cmp(&y).unwrap_or(Ordering::Equal)
        })
    };
    let ord = match (&a, &b) {
        (Value::Number(x), Value::Number(y)) => x.partial_cmp(y).unwrap_or(Ordering::Equal),
        (Value::Str(x), Value::Str(y)) => match (integer_ids, x.parse::<i64>(), y.parse::<i64>()) {
            (true, Ok(m), Ok(n)) => m.cmp(&n),
            _ => x.cmp(y),
        },
        (Value::Number(x), Value::Str(y)) => by_number(*x, y),
        (Value::Str(x), Value::Number(y)) => by_number(*y, x).reverse(),
    };
    if ascending { ord } else { ord.reverse() }
}

// ---------------------------------------------------------------------------------------------
// Page tokens

/// MLflow's page token: base64 of the JSON `{"offset": N}`, byte for byte as MLflow writes it.
pub fn encode_page_token(offset: usize) -> String {
    STANDARD.encode(format!("{{\"offset\": {offset}}}"))
}

/// Reads a page token (MLflow's, or a logged-model token, which also carries `offset`); an empty
/// token is offset 0.
pub fn decode_page_token(token: &str) -> Result<usize, String> {
    let token = token.trim();
    if token.is_empty() {
        return Ok(0);
    }
    let shown: String = if token.chars().count() > 64 {
        format!("{}…", token.chars().take(64).collect::<String>())
    } else {
        token.to_string()
    };
    let bytes = STANDARD_PAD_INDIFFERENT
        .decode(token)
        .map_err(|_| format!("invalid page token '{shown}': not base64"))?;
    let json: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|_| format!("invalid page token '{shown}': not JSON"))?;
    let offset = match json.get("offset") {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.trim().parse::<u64>().ok(),
        _ => return Err(format!("invalid page token '{shown}': no offset")),
    };
    offset.and_then(|n| usize::try_from(n).ok()).ok_or_else(|| {
        format!("invalid page token '{shown}': offset is not a non-negative integer")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Item {
        fields: HashMap<(String, String), Value<'static>>,
        datasets: Vec<(&'static str, &'static str, Option<&'static str>)>,
    }

    fn kind_name(kind: KeyType) -> String {
        format!("{kind:?}")
    }

    impl Item {
        fn set(mut self, kind: KeyType, key: &str, value: Value<'static>) -> Self {
            self.fields
                .insert((kind_name(kind), key.to_string()), value);
            self
        }
        fn metric(self, key: &str, x: f64) -> Self {
            self.set(KeyType::Metric, key, Value::Number(x))
        }
        fn param(self, key: &str, v: &'static str) -> Self {
            self.set(KeyType::Param, key, Value::Str(v.into()))
        }
        fn tag(self, key: &str, v: &'static str) -> Self {
            self.set(KeyType::Tag, key, Value::Str(v.into()))
        }
        fn meta(self, key: &str, v: &'static str) -> Self {
            self.set(KeyType::Param, key, Value::Str(v.into()))
        }
        fn attr(self, key: &str, v: &'static str) -> Self {
            self.set(KeyType::Attribute, key, Value::Str(v.into()))
        }
        fn num(self, key: &str, x: f64) -> Self {
            self.set(KeyType::Attribute, key, Value::Number(x))
        }
        fn dataset(
            mut self,
            name: &'static str,
            digest: &'static str,
            context: Option<&'static str>,
        ) -> Self {
            self.datasets.push((name, digest, context));
            self
        }
    }

    impl Searchable for Item {
        fn field(&self, kind: KeyType, key: &str) -> Option<Value<'_>> {
            self.fields
                .get(&(kind_name(kind), key.to_string()))
                .cloned()
        }
        fn datasets(&self) -> Vec<(&str, &str, Option<&str>)> {
            self.datasets.clone()
        }
    }

    fn item() -> Item {
        Item::default()
    }

    fn hit(entity: Entity, filter: &str, item: &Item) -> bool {
        Filter::parse(entity, filter)
            .unwrap_or_else(|e| panic!("{filter}: {e}"))
            .matches(item)
    }

    fn run(filter: &str, item: &Item) -> bool {
        hit(Entity::Run, filter, item)
    }

    fn err(entity: Entity, filter: &str) -> String {
        Filter::parse(entity, filter).expect_err(filter)
    }

    #[test]
    fn empty_filter_matches_all() {
        assert!(run("", &item()));
        assert!(run("   \n\t", &item()));
        assert!(Filter::parse(Entity::Trace, " ").expect("blank").is_empty());
    }

    #[test]
    fn metric_comparators() {
        let it = item().metric("acc", 0.5);
        for (f, want) in [
            ("metrics.acc = 0.5", true),
            ("metrics.acc != 0.5", false),
            ("metrics.acc < 0.6", true),
            ("metrics.acc <= 0.5", true),
            ("metrics.acc > 0.5", false),
            ("metrics.acc >= 0.5", true),
            ("metric.acc>0.4", true),
            ("metrics.acc > -1", true),
            ("metrics.acc < 5e-1", false),
            ("metrics.acc = .5", true),
            ("metrics.acc <= 5E-1", true),
            ("metrics.acc > 1", false),
        ] {
            assert_eq!(run(f, &it), want, "{f}");
        }
    }

    #[test]
    fn metric_absent_and_nan() {
        assert!(!run("metrics.acc != 1", &item()));
        let nan = item().metric("acc", f64::NAN);
        assert!(run("metrics.acc != 1", &nan));
        for f in ["metrics.acc = 1", "metrics.acc < 1", "metrics.acc >= 1"] {
            assert!(!run(f, &nan), "{f}");
        }
    }

    #[test]
    fn metric_errors() {
        assert!(err(Entity::Run, "metrics.acc LIKE '1'").contains("'LIKE'"));
        assert!(
            err(Entity::Run, "metrics.acc = 'x'")
                .contains("numeric value for metric 'metrics.acc'")
        );
        assert!(err(Entity::Run, "metrics.acc IS NULL").contains("'IS NULL'"));
        assert!(err(Entity::Run, "metrics.acc = 1abc").contains("invalid number '1abc'"));
    }

    #[test]
    fn param_and_tag_comparators() {
        let it = item().param("lr", "0.01").tag("team", "Vision");
        for (f, want) in [
            ("params.lr = '0.01'", true),
            ("param.lr != '0.01'", false),
            ("parameters.lr LIKE '0.%'", true),
            ("params.lr IS NOT NULL", true),
            ("params.other IS NULL", true),
            ("params.lr is null", false),
            ("params.other != 'x'", false),
            ("tags.team = \"Vision\"", true),
            ("tag.team LIKE 'vis%'", false),
            ("tags.team ILIKE 'vis%'", true),
            ("tags.team like 'V_sion'", true),
            ("tags.other IS NULL and params.lr = '0.01'", true),
        ] {
            assert_eq!(run(f, &it), want, "{f}");
        }
        assert!(err(Entity::Run, "params.lr IN ('a')").contains("'IN'"));
        assert!(err(Entity::Run, "params.lr = 0.01").contains("quoted string value for param"));
        assert!(err(Entity::Run, "tags.team = Vision").contains("found 'Vision'"));
        assert!(err(Entity::Run, "tags.team = `Vision`").contains("found '`Vision`'"));
    }

    #[test]
    fn quoted_keys_and_values() {
        let it = item()
            .tag("my key", "it's")
            .tag("mlflow.runName", "r1")
            .metric("f1 score", 1.0);
        assert!(run("tags.`my key` = 'it''s'", &it));
        assert!(run("tags.\"my key\" = 'it\\'s'", &it));
        assert!(run("tags.mlflow.runName = 'r1'", &it));
        assert!(run("tags.`mlflow.runName` = 'r1'", &it));
        assert!(run("`metrics`.`f1 score` = 1", &it));
        assert!(run("metrics.\"f1 score\" >= 1", &it));
    }

    #[test]
    fn prefixes() {
        let it = item().attr("status", "FINISHED");
        for f in [
            "status = 'FINISHED'",
            "attributes.status = 'FINISHED'",
            "attr.status = 'FINISHED'",
            "run.status = 'FINISHED'",
        ] {
            assert!(run(f, &it), "{f}");
        }
        let e = err(Entity::Run, "foo.bar = 'x'");
        assert!(e.contains("invalid entity type 'foo'"), "{e}");
    }

    #[test]
    fn run_attributes() {
        let it = item()
            .attr("run_id", "abc")
            .attr("run_name", "nice-run")
            .attr("user_id", "ann")
            .attr("artifact_uri", "s3://Bucket/x")
            .num("start_time", 1000.0);
        for (f, want) in [
            ("attributes.run_id IN ('abc', 'def')", true),
            ("run_id NOT IN ('abc',)", false),
            ("attributes.start_time >= 1000", true),
            ("attributes.created < 1000", false),
            ("Created = 1000", true),
            ("attributes.end_time > 0", false),
            ("attributes.`Run name` = 'nice-run'", true),
            ("\"run name\" LIKE 'nice%'", true),
            ("attributes.run_name != 'x'", true),
            ("user_id LIKE 'a_n'", true),
            ("artifact_uri ILIKE 's3://bucket/%'", true),
        ] {
            assert_eq!(run(f, &it), want, "{f}");
        }
        assert!(
            err(Entity::Run, "attributes.status IN ('A')")
                .contains("'IN' for attribute 'attributes.status'")
        );
        assert!(
            err(Entity::Run, "start_time > '5'")
                .contains("numeric value for attribute 'start_time'")
        );
        assert!(err(Entity::Run, "start_time LIKE 5").contains("'LIKE'"));
        assert!(err(Entity::Run, "status = 5").contains("quoted string"));
        assert!(err(Entity::Run, "attributes.foo = 'x'").contains("invalid attribute key 'foo'"));
        assert!(err(Entity::Run, "run_id IN 'abc'").contains("expected a list"));
        assert!(err(Entity::Run, "run_id = ('a')").contains("only valid with IN"));
    }

    #[test]
    fn datasets() {
        let it = item()
            .dataset("train", "d1", Some("training"))
            .dataset("eval", "d2", None);
        for (f, want) in [
            ("datasets.name = 'eval'", true),
            ("dataset.name != 'train'", true),
            ("datasets.digest IN ('d2', 'd9')", true),
            ("datasets.context LIKE 'train%'", true),
            ("datasets.context = 'eval'", false),
            ("datasets.name NOT IN ('train', 'eval')", false),
        ] {
            assert_eq!(run(f, &it), want, "{f}");
        }
        assert!(!run("datasets.name = 'train'", &item()));
        assert!(err(Entity::Run, "datasets.size = 'x'").contains("invalid dataset key 'size'"));
    }

    #[test]
    fn like_semantics() {
        assert!(like("abc", "abc", false));
        assert!(!like("abcd", "abc", false));
        assert!(like("abc", "%", false));
        assert!(like("", "%", false));
        assert!(like("a.c", "a.c", false));
        assert!(!like("abc", "a.c", false));
        assert!(like("xaXbY", "%a%b_", false));
        assert!(!like("ABC", "abc", false));
        assert!(like("ÄBC", "äb%", true));
        assert!(like("mississippi", "%iss%ppi", false));
    }

    #[test]
    fn syntax_errors_name_the_token() {
        let e = |f| err(Entity::Run, f);
        assert!(e("tags.a = 'x").contains("unterminated string"));
        assert!(e("tags.`a = 'x'").contains("unterminated backtick"));
        assert!(e("tags.a = 'x' AND").contains("ends with 'AND'"));
        assert!(e("tags.a = 'x' OR tags.b = 'y'").contains("'OR' is not supported"));
        assert!(e("(tags.a = 'x')").contains("parentheses"));
        assert!(e("tags.a = 'x' tags.b = 'y'").contains("expected AND"));
        assert!(e("tags.a =").contains("expected a value after 'tags.a ='"));
        assert!(e("tags.a").contains("expected a comparator after 'tags.a'"));
        assert!(e("metrics.a == 1").contains("invalid comparator '=='"));
        assert!(e("metrics.a <> 1").contains("invalid comparator '<>'"));
        assert!(e("metrics.my-key > 1").contains("unexpected character '-'"));
        assert!(e("tags.a NOT LIKE 'x'").contains("'NOT LIKE'"));
        assert!(e("tags.a RLIKE 'x'").contains("RLIKE"));
        assert!(e("run_id IN ()").contains("empty"));
        assert!(e("run_id IN ('a', 1)").contains("found '1'"));
        assert!(e("run_id IN ('a'").contains("unterminated list"));
        assert!(e("AND tags.a = 'x'").contains("keyword 'AND'"));
        assert!(e("tags. = 'x'").contains("expected a name after 'tags.'"));
        assert!(e("tags.a = 'x';").contains("unexpected character ';'"));
        assert!(e("tags.`` = 'x'").contains("empty key"));
    }

    #[test]
    fn experiments() {
        let it = item()
            .attr("name", "Default")
            .attr("experiment_id", "0")
            .num("creation_time", 10.0)
            .tag("t", "v");
        let exp = |f| hit(Entity::Experiment, f, &it);
        assert!(exp("name LIKE 'Def%'"));
        assert!(exp("attribute.experiment_id IN ('0', '1')"));
        assert!(exp("creation_time > 5"));
        assert!(exp("tags.t = 'v' AND tags.u IS NULL"));
        assert!(!exp("last_update_time > 5"));
        let e = |f| err(Entity::Experiment, f);
        assert!(e("attributes.name = 'x'").contains("invalid entity type 'attributes'"));
        assert!(e("metrics.a > 1").contains("invalid entity type 'metrics'"));
        assert!(e("experiment_id LIKE '1%'").contains("'LIKE'"));
        assert!(e("name IN ('a')").contains("'IN'"));
        assert!(e("creation_time > 1.5").contains("integer"));
    }

    #[test]
    fn registered_models_and_prompts() {
        let it = item().attr("name", "m1").tag("k", "v");
        let rm = |f| hit(Entity::RegisteredModel, f, &it);
        assert!(rm("name IN ('m1', 'm2') AND tags.k = 'v'"));
        assert!(rm("tags.`mlflow.prompt.is_prompt` != 'true'"));
        assert!(rm("tags.`mlflow.prompt.is_prompt` = 'false'"));
        assert!(!rm("tags.`mlflow.prompt.is_prompt` = 'true'"));
        assert!(!rm("tags.other != 'true'"));
        assert!(err(Entity::RegisteredModel, "tags.k IS NULL").contains("'IS NULL'"));
        assert!(
            err(Entity::RegisteredModel, "creation_timestamp > 1")
                .contains("invalid attribute key")
        );
        assert_eq!(
            with_prompt_filter("", false),
            "tags.`mlflow.prompt.is_prompt` != 'true'"
        );
        assert_eq!(
            with_prompt_filter("name = 'a'", true),
            "name = 'a' AND tags.`mlflow.prompt.is_prompt` = 'true'"
        );
        assert_eq!(
            with_prompt_filter("tags.`mlflow.prompt.is_prompt` = 'true'", false),
            "tags.`mlflow.prompt.is_prompt` = 'true'"
        );
    }

    #[test]
    fn model_versions() {
        let it = item()
            .attr("name", "m")
            .num("version_number", 3.0)
            .attr("run_id", "r")
            .attr("source_path", "s3://a/b");
        let mv = |f| hit(Entity::ModelVersion, f, &it);
        assert!(mv("version_number = '3'"));
        assert!(mv("version_number > 2 AND name = 'm'"));
        assert!(mv("run_id IN ('r') AND source_path LIKE 's3://%'"));
        assert!(mv("tags.`mlflow.prompt.is_prompt` != 'true'"));
        assert!(
            err(Entity::ModelVersion, "version_number = 3.5")
                .contains("integer value for 'version_number'")
        );
        assert!(err(Entity::ModelVersion, "version_number = 'x'").contains("integer value"));
        assert!(err(Entity::ModelVersion, "source_path IN ('a')").contains("'IN'"));
    }

    #[test]
    fn logged_models() {
        let it = item()
            .metric("acc", 0.9)
            .param("lr", "0.1")
            .attr("status", "READY")
            .num("creation_timestamp", 5.0);
        let lm = |f| hit(Entity::LoggedModel, f, &it);
        assert!(lm("metrics.acc > 0.5 AND params.lr IN ('0.1', '0.2')"));
        assert!(lm("creation_time = 5 AND status IN ('READY')"));
        assert!(lm("attributes.creation_timestamp >= 5"));
        assert!(
            err(Entity::LoggedModel, "metric.acc > 1").contains("invalid entity type 'metric'")
        );
        assert!(err(Entity::LoggedModel, "datasets.name = 'x'").contains("invalid entity type"));
    }

    #[test]
    fn traces() {
        let it = item()
            .num("timestamp_ms", 100.0)
            .attr("status", "OK")
            .attr("name", "predict")
            .tag("mlflow.traceName", "predict")
            .attr("run_id", "r1")
            .meta("k", "v");
        let tr = |f| hit(Entity::Trace, f, &it);
        assert!(tr("timestamp > 50 AND trace.timestamp_ms <= 100"));
        assert!(tr(
            "name = 'predict' AND attributes.status IN ('OK', 'ERROR')"
        ));
        assert!(tr("run_id = 'r1' AND metadata.other IS NULL"));
        assert!(tr("metadata.k = 'v' AND request_metadata.k LIKE 'v%'"));
        assert!(err(Entity::Trace, "metadata.k IN ('v')").contains("for metadata 'metadata.k'"));
        assert!(tr("tags.mlflow.traceName LIKE 'pred%'"));
        assert!(!tr("execution_time > 1"));
        assert!(err(Entity::Trace, "span.name = 'x'").contains("not supported"));
        assert!(err(Entity::Trace, "prompt = 'a/1'").contains("not supported"));
        assert!(err(Entity::Trace, "metrics.a > 1").contains("invalid entity type"));
    }

    #[test]
    fn pinned_values_intersect() {
        let f = Filter::parse(
            Entity::Run,
            "run_id IN ('a', 'b', 'c') AND run_id = 'b' AND tags.x = 'y'",
        )
        .expect("parse");
        assert_eq!(
            f.pinned_values(KeyType::Attribute, "run_id"),
            Some(vec!["b"])
        );
        assert_eq!(f.pinned_values(KeyType::Attribute, "status"), None);
        let f = Filter::parse(Entity::Run, "run_id NOT IN ('a')").expect("parse");
        assert_eq!(f.pinned_values(KeyType::Attribute, "run_id"), None);
        let f = Filter::parse(Entity::Trace, "run_id = 'r'").expect("parse");
        assert_eq!(
            f.pinned_values(KeyType::Attribute, "run_id"),
            Some(vec!["r"])
        );
    }

    fn order(entity: Entity, clauses: &[&str], mut items: Vec<Item>) -> Vec<String> {
        let clauses: Vec<String> = clauses.iter().map(|s| s.to_string()).collect();
        let order = OrderBy::parse(entity, &clauses).unwrap_or_else(|e| panic!("{clauses:?}: {e}"));
        items.sort_by(|a, b| order.compare(a, b));
        items
            .iter()
            .map(|i| {
                i.field(KeyType::Param, "id")
                    .map(|v| v.text().into_owned())
                    .unwrap_or_default()
            })
            .collect()
    }

    fn order_err(entity: Entity, clauses: &[&str]) -> String {
        let clauses: Vec<String> = clauses.iter().map(|s| s.to_string()).collect();
        OrderBy::parse(entity, &clauses).expect_err("should fail")
    }

    fn r(id: &'static str, start: f64) -> Item {
        item()
            .param("id", id)
            .attr("run_id", id)
            .num("start_time", start)
    }

    #[test]
    fn run_order_missing_and_nan_last() {
        let runs = || {
            vec![
                r("a", 1.0).metric("acc", 0.5),
                r("b", 1.0),
                r("c", 1.0).metric("acc", f64::NAN),
                r("d", 1.0).metric("acc", 0.9),
            ]
        };
        assert_eq!(
            order(Entity::Run, &["metrics.acc DESC"], runs()),
            ["d", "a", "c", "b"]
        );
        assert_eq!(
            order(Entity::Run, &["metrics.acc"], runs()),
            ["a", "d", "c", "b"]
        );
        assert_eq!(
            order(Entity::Run, &["metric.`acc` asc"], runs()),
            ["a", "d", "c", "b"]
        );
    }

    #[test]
    fn run_order_tie_breakers() {
        let runs = || vec![r("b", 1.0), r("a", 1.0), r("c", 2.0)];
        assert_eq!(order(Entity::Run, &[], runs()), ["c", "a", "b"]);
        assert_eq!(
            order(Entity::Run, &["attributes.start_time ASC"], runs()),
            ["a", "b", "c"]
        );
        assert_eq!(order(Entity::Run, &["created"], runs()), ["a", "b", "c"]);
        let tagged = vec![
            r("x", 1.0).tag("t", "b"),
            r("y", 1.0).tag("t", "a"),
            r("z", 1.0),
        ];
        assert_eq!(
            order(Entity::Run, &["tags.t DESC"], tagged),
            ["x", "y", "z"]
        );
        let params = vec![r("p", 1.0).param("lr", "10"), r("q", 1.0).param("lr", "9")];
        assert_eq!(order(Entity::Run, &["params.lr"], params), ["p", "q"]);
    }

    #[test]
    fn order_errors() {
        assert!(order_err(Entity::Run, &["metrics.acc", "metric.acc DESC"]).contains("duplicate"));
        assert!(order_err(Entity::Run, &["start_time", "created"]).contains("duplicate"));
        assert!(
            order_err(Entity::Run, &["datasets.name"]).contains("cannot be ordered by dataset")
        );
        assert!(
            order_err(Entity::Run, &["metrics.acc UP"])
                .contains("expected ASC or DESC after 'metrics.acc', found 'UP'")
        );
        assert!(order_err(Entity::Run, &["metrics.acc DESC x"]).contains("unexpected 'x'"));
        assert!(order_err(Entity::Run, &[""]).contains("expected a field"));
        assert!(order_err(Entity::Run, &["`Run name`"]).contains("invalid attribute key"));
        assert!(order_err(Entity::Experiment, &["tags.a"]).contains("cannot be ordered by tag"));
        assert!(
            order_err(
                Entity::RegisteredModel,
                &["timestamp", "last_updated_timestamp"]
            )
            .contains("duplicate")
        );
        assert!(
            order_err(Entity::ModelVersion, &["run_id"]).contains("invalid attribute key 'run_id'")
        );
        assert!(
            order_err(Entity::LoggedModel, &["params.lr"]).contains("cannot be ordered by param")
        );
    }

    #[test]
    fn experiment_order() {
        let e = |id: &'static str, created: f64| {
            item()
                .param("id", id)
                .attr("experiment_id", id)
                .attr("name", "n")
                .num("creation_time", created)
        };
        let exps = || vec![e("9", 1.0), e("10", 1.0), e("2", 5.0)];
        assert_eq!(order(Entity::Experiment, &[], exps()), ["2", "9", "10"]);
        assert_eq!(
            order(Entity::Experiment, &["name"], exps()),
            ["10", "9", "2"]
        );
        assert_eq!(
            order(Entity::Experiment, &["creation_time"], exps()),
            ["10", "9", "2"]
        );
    }

    #[test]
    fn registry_order() {
        let m = |name: &'static str, updated: f64| {
            item()
                .param("id", name)
                .attr("name", name)
                .num("last_updated_timestamp", updated)
        };
        assert_eq!(
            order(
                Entity::RegisteredModel,
                &["timestamp DESC"],
                vec![m("b", 1.0), m("a", 1.0), m("c", 2.0)]
            ),
            ["c", "a", "b"]
        );
        assert_eq!(
            order(Entity::RegisteredModel, &[], vec![m("b", 1.0), m("a", 2.0)]),
            ["a", "b"]
        );
        let v = |id: &'static str, name: &'static str, version: f64, updated: f64| {
            item()
                .param("id", id)
                .attr("name", name)
                .num("version_number", version)
                .num("last_updated_timestamp", updated)
        };
        let versions = || {
            vec![
                v("a1", "a", 1.0, 5.0),
                v("a2", "a", 2.0, 5.0),
                v("b1", "b", 1.0, 9.0),
            ]
        };
        assert_eq!(
            order(Entity::ModelVersion, &[], versions()),
            ["b1", "a2", "a1"]
        );
        assert_eq!(
            order(Entity::ModelVersion, &["version_number ASC"], versions()),
            ["a1", "b1", "a2"]
        );
    }

    #[test]
    fn logged_model_and_trace_order() {
        let lm = |id: &'static str, created: f64| {
            item()
                .param("id", id)
                .attr("model_id", id)
                .num("creation_timestamp", created)
        };
        let models = vec![
            lm("m2", 1.0).metric("acc", 0.1),
            lm("m1", 1.0),
            lm("m3", 3.0).metric("acc", 0.1),
        ];
        assert_eq!(
            order(Entity::LoggedModel, &["metrics.acc DESC"], models),
            ["m3", "m2", "m1"]
        );
        let t = |id: &'static str, ts: f64| {
            item()
                .param("id", id)
                .attr("request_id", id)
                .num("timestamp_ms", ts)
        };
        assert_eq!(
            order(
                Entity::Trace,
                &[],
                vec![t("b", 1.0), t("a", 1.0), t("c", 2.0)]
            ),
            ["c", "a", "b"]
        );
        let named = vec![
            t("x", 1.0).attr("name", "zeta"),
            t("y", 1.0).attr("name", "alpha"),
        ];
        assert_eq!(order(Entity::Trace, &["name"], named), ["y", "x"]);
    }

    #[test]
    fn page_tokens() {
        assert_eq!(encode_page_token(10), "eyJvZmZzZXQiOiAxMH0=");
        for n in [0, 1, 99, 123_456_789] {
            assert_eq!(decode_page_token(&encode_page_token(n)), Ok(n));
        }
        assert_eq!(decode_page_token(""), Ok(0));
        assert_eq!(decode_page_token("eyJvZmZzZXQiOiAxMH0"), Ok(10));
        let b64 = |s: &str| STANDARD.encode(s);
        assert_eq!(decode_page_token(&b64("{\"offset\": \"7\"}")), Ok(7));
        assert_eq!(
            decode_page_token(&b64("{\"experiment_ids\": [\"1\"], \"offset\": 3}")),
            Ok(3)
        );
        assert!(
            decode_page_token("not base64!")
                .expect_err("garbage")
                .contains("not base64")
        );
        assert!(
            decode_page_token(&b64("hello"))
                .expect_err("text")
                .contains("not JSON")
        );
        assert!(
            decode_page_token(&b64("{\"page\": 1}"))
                .expect_err("no offset")
                .contains("no offset")
        );
        assert!(
            decode_page_token(&b64("[1]"))
                .expect_err("array")
                .contains("no offset")
        );
        assert!(
            decode_page_token(&b64("{\"offset\": -1}"))
                .expect_err("negative")
                .contains("non-negative")
        );
        assert!(
            decode_page_token(&b64("{\"offset\": 1.5}"))
                .expect_err("fraction")
                .contains("non-negative")
        );
        let long = "A".repeat(500) + "!";
        assert!(decode_page_token(&long).expect_err("long").chars().count() < 150);
    }
}
