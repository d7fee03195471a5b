//! How `rallymq sub` prints a message, byte for byte as `mosquitto_sub` 2.0 does: the payload
//! alone, `-v` (topic and payload), or `-F FORMAT`, each followed by a newline unless `-N`.
//!
//! `-F` follows mosquitto_sub's `OUTPUT FORMAT` (man mosquitto_sub): `%` sequences with optional
//! `-`/`0` flags, field width and precision, `@` sequences passed to strftime (`@N`:
//! nanoseconds), and `\` escapes. `%j` and `%J` print the JSON that mosquitto_sub prints with
//! cJSON, `--pretty` included. What cannot be the same: the clock, and the order of MQTT 5
//! properties in `%j` (mosquitto_sub keeps the order they came in on the wire; the decoded
//! message keeps no order, so they are printed in the order the rallymq broker sends them).

use chrono::{DateTime, Local};
use rallymq_codec::{Message, QoS};

/// What `-F` can contain after a `%` (mosquitto_sub's `check_format`).
const FIELDS: &[u8] = b"%ACDEFIlmPpqRSrtjJUxX";

/// One piece of a `-F` format.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    /// Printed as is (escapes already resolved).
    Literal(Vec<u8>),
    /// A `%` sequence.
    Field(Field),
    /// `@X`: strftime's `%X` on the local time of the message.
    Time(char),
    /// `@N`: nanoseconds in the current second, 9 digits.
    Nanos,
}

/// A `%` sequence: `%[-|0][width][.precision]X`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Field {
    spec: u8,
    left: bool,
    zero: bool,
    width: usize,
    precision: Option<usize>,
}

/// A parsed `-F` format string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Format {
    items: Vec<Item>,
}

impl Format {
    /// Parses a format, refusing what mosquitto_sub refuses, with its messages.
    pub(crate) fn parse(format: &str) -> Result<Self, String> {
        let bytes = format.as_bytes();
        let incomplete = || "Incomplete format specifier.".to_owned();
        let mut items = Vec::new();
        let mut literal = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'%' => {
                    i += 1;
                    let mut field = Field {
                        spec: 0,
                        left: false,
                        zero: false,
                        width: 0,
                        precision: None,
                    };
                    match bytes.get(i) {
                        Some(b'-') => {
                            field.left = true;
                            i += 1;
                        }
                        Some(b'0') => {
                            field.zero = true;
                            i += 1;
                        }
                        _ => {}
                    }
                    field.width = digits(bytes, &mut i);
                    if bytes.get(i) == Some(&b'.') {
                        i += 1;
                        field.precision = Some(digits(bytes, &mut i));
                    }
                    let spec = *bytes.get(i).ok_or_else(incomplete)?;
                    if !FIELDS.contains(&spec) {
                        return Err(format!("Invalid format specifier '{}'.", char::from(spec)));
                    }
                    field.spec = spec;
                    if spec == b'%' {
                        literal.push(b'%');
                    } else {
                        flush(&mut items, &mut literal);
                        items.push(Item::Field(field));
                    }
                }
                b'@' => {
                    i += 1;
                    // A whole character: strftime's specifiers are ASCII, and an `@` before
                    // anything else is passed on as glibc does (printed as it is).
                    let next = format[i..].chars().next().ok_or_else(incomplete)?;
                    i += next.len_utf8() - 1;
                    match next {
                        '@' => literal.push(b'@'),
                        'N' => {
                            flush(&mut items, &mut literal);
                            items.push(Item::Nanos);
                        }
                        other => {
                            flush(&mut items, &mut literal);
                            items.push(Item::Time(other));
                        }
                    }
                }
                b'\\' => {
                    i += 1;
                    let escape = *bytes
                        .get(i)
                        .ok_or_else(|| "Incomplete escape specifier.".to_owned())?;
                    literal.push(match escape {
                        b'\\' => b'\\',
                        b'0' => 0,
                        b'a' => 0x07,
                        b'e' => 0x1b,
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'v' => 0x0b,
                        other => {
                            return Err(format!(
                                "Invalid escape specifier '{}'.",
                                char::from(other)
                            ));
                        }
                    });
                }
                byte => literal.push(byte),
            }
            i += 1;
        }
        flush(&mut items, &mut literal);
        Ok(Self { items })
    }

    /// Whether printing needs the message's packet identifier (`%m`, `%j`, `%J`).
    pub(crate) fn needs_packet_id(&self) -> bool {
        self.items.iter().any(|item| {
            matches!(
                item,
                Item::Field(Field {
                    spec: b'm' | b'j' | b'J',
                    ..
                })
            )
        })
    }
}

fn digits(bytes: &[u8], i: &mut usize) -> usize {
    let mut value = 0usize;
    while let Some(digit) = bytes.get(*i).filter(|b| b.is_ascii_digit()) {
        value = value
            .saturating_mul(10)
            .saturating_add(usize::from(digit - b'0'));
        *i += 1;
    }
    value
}

fn flush(items: &mut Vec<Item>, literal: &mut Vec<u8>) {
    if !literal.is_empty() {
        items.push(Item::Literal(std::mem::take(literal)));
    }
}

/// How messages are printed.
#[derive(Debug, Clone)]
pub(crate) enum Style {
    /// The payload (nothing at all for an empty one).
    Payload,
    /// `-v`: topic, space, payload (`topic (null)` for an empty one).
    Verbose,
    /// `-F`.
    Format(Format),
}

/// `sub`'s printer: the style, `-N` and `--pretty`.
#[derive(Debug, Clone)]
pub(crate) struct Printer {
    pub(crate) style: Style,
    /// A newline after each message (off with `-N`).
    pub(crate) eol: bool,
    /// `--pretty`: `%j` and `%J` print indented JSON.
    pub(crate) pretty: bool,
}

/// What a message carries beyond [`Message`]: its packet identifier (0 for QoS 0) and the time
/// it was printed.
pub(crate) struct Context {
    pub(crate) packet_id: u16,
    pub(crate) now: DateTime<Local>,
}

impl Printer {
    /// The bytes to print for `message`; `errors` gets the lines mosquitto_sub prints to
    /// stderr meanwhile (a `%J` payload that is not JSON).
    pub(crate) fn render(
        &self,
        message: &Message,
        context: &Context,
        errors: &mut Vec<String>,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(message.payload.len() + 64);
        match &self.style {
            Style::Payload => {
                if message.payload.is_empty() {
                    return out;
                }
                out.extend_from_slice(&message.payload);
            }
            Style::Verbose => {
                out.extend_from_slice(message.topic.as_str().as_bytes());
                if message.payload.is_empty() {
                    if !self.eol {
                        return Vec::new();
                    }
                    out.extend_from_slice(b" (null)");
                } else {
                    out.push(b' ');
                    out.extend_from_slice(&message.payload);
                }
            }
            Style::Format(format) => {
                for item in &format.items {
                    match item {
                        Item::Literal(bytes) => out.extend_from_slice(bytes),
                        Item::Field(field) => {
                            self.field(&mut out, *field, message, context, errors);
                        }
                        Item::Time(specifier) => {
                            out.extend_from_slice(strftime(&context.now, *specifier).as_bytes());
                        }
                        Item::Nanos => out.extend_from_slice(
                            format!("{:09}", context.now.timestamp_subsec_nanos()).as_bytes(),
                        ),
                    }
                }
            }
        }
        if self.eol {
            out.push(b'\n');
        }
        out
    }

    fn field(
        &self,
        out: &mut Vec<u8>,
        field: Field,
        message: &Message,
        context: &Context,
        errors: &mut Vec<String>,
    ) {
        let properties = &message.properties;
        let pad = if field.zero { b'0' } else { b' ' };
        match field.spec {
            // The engine resolves topic aliases and drops the property, as the message is
            // handed on: there is never one to print.
            b'A' => blank(out, pad, field.width),
            b'C' => match &properties.content_type {
                Some(value) => string(out, value.as_str().as_bytes(), field),
                None => blank(out, b' ', field.width),
            },
            b'D' => {
                if let Some(data) = &properties.correlation_data {
                    out.extend_from_slice(data);
                }
            }
            b'E' => match properties.message_expiry_interval {
                // As mosquitto_sub, through a C int.
                Some(value) => int(out, i64::from(value as i32), field),
                None => blank(out, pad, field.width),
            },
            b'F' => match properties.payload_format_indicator {
                Some(value) => int(out, value as i64, field),
                None => blank(out, pad, field.width),
            },
            b'I' => string(
                out,
                context
                    .now
                    .format("%Y-%m-%dT%H:%M:%S%z")
                    .to_string()
                    .as_bytes(),
                field,
            ),
            b'j' | b'J' => {
                let escaped = field.spec == b'j';
                match json_message(message, context, escaped) {
                    Some(json) => json.write(out, self.pretty, 0),
                    None => errors.push(format!(
                        "Error: Message payload is not valid JSON on topic {}.",
                        message.topic
                    )),
                }
            }
            b'l' => int(out, message.payload.len() as i64, field),
            b'm' => int(out, i64::from(context.packet_id), field),
            b'P' => {
                for (i, property) in properties.user_properties.iter().enumerate() {
                    if i > 0 {
                        out.push(b' ');
                    }
                    out.extend_from_slice(property.name.as_str().as_bytes());
                    out.push(b':');
                    out.extend_from_slice(property.value.as_str().as_bytes());
                }
            }
            b'p' => payload(out, &message.payload, Hex::No, field),
            b'q' => out.push(b'0' + message.qos as u8),
            b'R' => {
                if let Some(topic) = &properties.response_topic {
                    string(out, topic.as_str().as_bytes(), field);
                }
            }
            b'r' => out.push(if message.retain { b'1' } else { b'0' }),
            b'S' => match properties.subscription_identifiers.first() {
                Some(id) => int(out, i64::from(id.get() as i32), field),
                None => blank(out, pad, field.width),
            },
            b't' => string(out, message.topic.as_str().as_bytes(), field),
            b'U' => out.extend_from_slice(
                format!(
                    "{}.{:09}",
                    context.now.timestamp(),
                    context.now.timestamp_subsec_nanos()
                )
                .as_bytes(),
            ),
            b'x' => payload(out, &message.payload, Hex::Lower, field),
            b'X' => payload(out, &message.payload, Hex::Upper, field),
            _ => {}
        }
    }
}

/// strftime's `%X` for `@X`; a specifier strftime does not know is printed as it is, as glibc
/// does.
fn strftime(now: &DateTime<Local>, specifier: char) -> String {
    use chrono::format::{Item, StrftimeItems};
    let pattern = format!("%{specifier}");
    let items: Vec<Item<'_>> = StrftimeItems::new(&pattern).collect();
    if items.iter().any(|item| matches!(item, Item::Error)) {
        return pattern;
    }
    now.format_with_items(items.into_iter()).to_string()
}

fn blank(out: &mut Vec<u8>, pad: u8, width: usize) {
    out.extend(std::iter::repeat_n(pad, width));
}

/// printf's `%d`, `%-Nd`, `%0Nd` and `%Nd`.
fn int(out: &mut Vec<u8>, value: i64, field: Field) {
    let width = field.width;
    let text = if field.left {
        format!("{value:<width$}")
    } else if field.zero {
        format!("{value:0width$}")
    } else {
        format!("{value:>width$}")
    };
    out.extend_from_slice(text.as_bytes());
}

/// printf's `%*.*s` on bytes: at most `precision` bytes, padded with spaces to `width`.
fn string(out: &mut Vec<u8>, value: &[u8], field: Field) {
    let value = match field.precision {
        Some(precision) => &value[..value.len().min(precision)],
        None => value,
    };
    let padding = field.width.saturating_sub(value.len());
    if !field.left {
        blank(out, b' ', padding);
    }
    out.extend_from_slice(value);
    if field.left {
        blank(out, b' ', padding);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Hex {
    No,
    Lower,
    Upper,
}

/// mosquitto_sub's `write_payload`, quirks kept: a width cuts the payload to that many bytes
/// (half as many in hex), and `-` without a width pads with as many spaces as were printed.
fn payload(out: &mut Vec<u8>, payload: &[u8], hex: Hex, field: Field) {
    let width = field.width as i64;
    let mut length = payload.len() as i64;
    let padding = if width > 0 {
        length = length.min(width);
        if hex == Hex::No {
            width - length
        } else {
            length /= 2;
            width - length * 2
        }
    } else {
        width - length
    };
    let pad = if field.zero { b'0' } else { b' ' };
    if !field.left && padding > 0 {
        blank(out, pad, padding as usize);
    }
    // `length` is at most the payload's length and never negative.
    let shown = &payload[..length as usize];
    match hex {
        Hex::No => out.extend_from_slice(shown),
        Hex::Lower => shown
            .iter()
            .for_each(|b| out.extend_from_slice(format!("{b:02x}").as_bytes())),
        Hex::Upper => shown
            .iter()
            .for_each(|b| out.extend_from_slice(format!("{b:02X}").as_bytes())),
    }
    if field.left {
        // printf("%*s", padlen, ""): a negative width pads as much on the left-aligned side.
        blank(out, b' ', padding.unsigned_abs() as usize);
    }
}

// ------------------------------------------------------------------------------ JSON

/// A JSON value as cJSON holds it; printed as cJSON prints it.
#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Number(f64),
    String(Vec<u8>),
    Array(Vec<Self>),
    Object(Vec<(Vec<u8>, Self)>),
}

/// The object `%j` (`escaped`) and `%J` print; `None` when `%J`'s payload is not JSON.
fn json_message(message: &Message, context: &Context, escaped: bool) -> Option<Json> {
    let now = &context.now;
    // mosquitto_sub's own layout, 'Z' and offset both.
    let tst = format!(
        "{}.{:06}Z{}",
        now.format("%Y-%m-%dT%H:%M:%S"),
        now.timestamp_subsec_micros(),
        now.format("%z")
    );
    let number = |n: f64| Json::Number(n);
    let mut object = vec![
        (b"tst".to_vec(), Json::String(tst.into_bytes())),
        (
            b"topic".to_vec(),
            Json::String(c_string(message.topic.as_str().as_bytes())),
        ),
        (b"qos".to_vec(), number(f64::from(message.qos as u8))),
        (
            b"retain".to_vec(),
            number(f64::from(u8::from(message.retain))),
        ),
        (b"payloadlen".to_vec(), number(message.payload.len() as f64)),
    ];
    if message.qos != QoS::AtMostOnce {
        object.push((b"mid".to_vec(), number(f64::from(context.packet_id))));
    }
    if let Some(properties) = json_properties(message) {
        object.push((b"properties".to_vec(), properties));
    }
    // libmosquitto hands the payload on as a C string: an empty one is NULL, and cJSON reads
    // up to the first NUL.
    let payload = if message.payload.is_empty() {
        Json::Null
    } else if escaped {
        Json::String(c_string(&message.payload))
    } else {
        parse_json(&message.payload)?
    };
    object.push((b"payload".to_vec(), payload));
    Some(Json::Object(object))
}

/// The MQTT 5 properties of `%j`, named as Mosquitto names them.
fn json_properties(message: &Message) -> Option<Json> {
    let properties = &message.properties;
    let mut object = Vec::new();
    let mut add = |name: &str, value: Json| object.push((name.as_bytes().to_vec(), value));
    if let Some(value) = properties.payload_format_indicator {
        add(
            "payload-format-indicator",
            Json::Number(f64::from(value as u8)),
        );
    }
    if let Some(value) = properties.message_expiry_interval {
        add("message-expiry-interval", Json::Number(f64::from(value)));
    }
    if let Some(value) = &properties.response_topic {
        add(
            "response-topic",
            Json::String(c_string(value.as_str().as_bytes())),
        );
    }
    if let Some(value) = &properties.correlation_data {
        add("correlation-data", Json::String(c_string(value)));
    }
    if let Some(value) = &properties.content_type {
        add(
            "content-type",
            Json::String(c_string(value.as_str().as_bytes())),
        );
    }
    if !properties.user_properties.is_empty() {
        let users = properties
            .user_properties
            .iter()
            .map(|p| {
                (
                    c_string(p.name.as_str().as_bytes()),
                    Json::String(c_string(p.value.as_str().as_bytes())),
                )
            })
            .collect();
        add("user-properties", Json::Object(users));
    }
    // One cJSON item per identifier, as libmosquitto gives them.
    for id in &properties.subscription_identifiers {
        add("subscription-identifier", Json::Number(f64::from(id.get())));
    }
    (!object.is_empty()).then_some(Json::Object(object))
}

/// The bytes up to the first NUL, as C reads a string.
fn c_string(bytes: &[u8]) -> Vec<u8> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    bytes[..end].to_vec()
}

impl Json {
    /// cJSON_PrintUnformatted, or cJSON_Print (`pretty`) at nesting `depth`.
    fn write(&self, out: &mut Vec<u8>, pretty: bool, depth: usize) {
        match self {
            Self::Null => out.extend_from_slice(b"null"),
            Self::Bool(true) => out.extend_from_slice(b"true"),
            Self::Bool(false) => out.extend_from_slice(b"false"),
            Self::Number(n) => out.extend_from_slice(number(*n).as_bytes()),
            Self::String(s) => escape(out, s),
            Self::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                        if pretty {
                            out.push(b' ');
                        }
                    }
                    item.write(out, pretty, depth + 1);
                }
                out.push(b']');
            }
            Self::Object(members) => {
                out.push(b'{');
                if pretty {
                    out.push(b'\n');
                }
                for (i, (key, value)) in members.iter().enumerate() {
                    if pretty {
                        blank(out, b'\t', depth + 1);
                    }
                    escape(out, key);
                    out.push(b':');
                    if pretty {
                        out.push(b'\t');
                    }
                    value.write(out, pretty, depth + 1);
                    if i + 1 < members.len() {
                        out.push(b',');
                    }
                    if pretty {
                        out.push(b'\n');
                    }
                }
                if pretty {
                    blank(out, b'\t', depth);
                }
                out.push(b'}');
            }
        }
    }
}

/// cJSON's string escaping: `"`, `\` and control characters; other bytes as they are.
fn escape(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    for &byte in s {
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..0x20 => out.extend_from_slice(format!("\\u{byte:04x}").as_bytes()),
            _ => out.push(byte),
        }
    }
    out.push(b'"');
}

/// cJSON's number: `%1.15g`, or `%1.17g` when that does not read back as the same double;
/// `null` for what is not finite.
fn number(n: f64) -> String {
    if !n.is_finite() {
        return "null".into();
    }
    let short = format_g(n, 15);
    match short.parse::<f64>() {
        Ok(back) if (back - n).abs() <= back.abs().max(n.abs()) * f64::EPSILON => short,
        _ => format_g(n, 17),
    }
}

/// C's `%.{precision}g`.
fn format_g(n: f64, precision: usize) -> String {
    if n == 0.0 {
        return if n.is_sign_negative() { "-0" } else { "0" }.into();
    }
    let scientific = format!("{:.*e}", precision - 1, n);
    let (mantissa, exponent) = scientific
        .split_once('e')
        .expect("Rust's {:e} always has an exponent");
    let exponent: i32 = exponent.parse().expect("Rust's exponent is an integer");
    if exponent < -4 || exponent >= precision as i32 {
        let mantissa = trim_zeros(mantissa);
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.unsigned_abs())
    } else {
        let decimals = (precision as i32 - 1 - exponent).max(0) as usize;
        trim_zeros(&format!("{n:.decimals$}")).to_owned()
    }
}

fn trim_zeros(number: &str) -> &str {
    if number.contains('.') {
        number.trim_end_matches('0').trim_end_matches('.')
    } else {
        number
    }
}

/// cJSON_ParseWithOpts with a NUL-terminated payload: one value, whitespace around it, and
/// nothing after; read up to the first NUL as libmosquitto's C string is.
fn parse_json(payload: &[u8]) -> Option<Json> {
    let text = &payload[..payload
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(payload.len())];
    let mut parser = Parser { text, at: 0 };
    let value = parser.value(0)?;
    parser.skip_whitespace();
    (parser.at == text.len()).then_some(value)
}

/// How deep cJSON nests before it refuses (CJSON_NESTING_LIMIT).
const NESTING_LIMIT: usize = 1000;

struct Parser<'a> {
    text: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn skip_whitespace(&mut self) {
        // cJSON skips every byte up to and including space.
        while self.text.get(self.at).is_some_and(|&b| b <= b' ') {
            self.at += 1;
        }
    }

    fn eat(&mut self, literal: &[u8]) -> bool {
        if self.text[self.at..].starts_with(literal) {
            self.at += literal.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Option<Json> {
        if depth > NESTING_LIMIT {
            return None;
        }
        self.skip_whitespace();
        match *self.text.get(self.at)? {
            b'n' if self.eat(b"null") => Some(Json::Null),
            b'f' if self.eat(b"false") => Some(Json::Bool(false)),
            b't' if self.eat(b"true") => Some(Json::Bool(true)),
            b'"' => self.string().map(Json::String),
            b'-' | b'0'..=b'9' => self.number(),
            b'[' => {
                self.at += 1;
                let mut items = Vec::new();
                self.skip_whitespace();
                if self.eat(b"]") {
                    return Some(Json::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    self.skip_whitespace();
                    if self.eat(b"]") {
                        return Some(Json::Array(items));
                    }
                    if !self.eat(b",") {
                        return None;
                    }
                }
            }
            b'{' => {
                self.at += 1;
                let mut members = Vec::new();
                self.skip_whitespace();
                if self.eat(b"}") {
                    return Some(Json::Object(members));
                }
                loop {
                    self.skip_whitespace();
                    if self.text.get(self.at) != Some(&b'"') {
                        return None;
                    }
                    let key = self.string()?;
                    self.skip_whitespace();
                    if !self.eat(b":") {
                        return None;
                    }
                    members.push((key, self.value(depth + 1)?));
                    self.skip_whitespace();
                    if self.eat(b"}") {
                        return Some(Json::Object(members));
                    }
                    if !self.eat(b",") {
                        return None;
                    }
                }
            }
            _ => None,
        }
    }

    /// As cJSON: the characters a C number can have, read with strtod (here: Rust's parser).
    fn number(&mut self) -> Option<Json> {
        let start = self.at;
        while self
            .text
            .get(self.at)
            .is_some_and(|b| b.is_ascii_digit() || b"+-eE.".contains(b))
        {
            self.at += 1;
        }
        let text = std::str::from_utf8(&self.text[start..self.at]).ok()?;
        text.parse::<f64>().ok().map(Json::Number)
    }

    /// A string after its opening quote, escapes resolved (`\u` to UTF-8, pairs joined).
    fn string(&mut self) -> Option<Vec<u8>> {
        self.at += 1;
        let mut out = Vec::new();
        loop {
            let byte = *self.text.get(self.at)?;
            self.at += 1;
            match byte {
                b'"' => return Some(out),
                b'\\' => {
                    let escape = *self.text.get(self.at)?;
                    self.at += 1;
                    match escape {
                        b'b' => out.push(0x08),
                        b'f' => out.push(0x0c),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'"' | b'\\' | b'/' => out.push(escape),
                        b'u' => {
                            let mut code = self.hex4()?;
                            if (0xDC00..0xE000).contains(&code) {
                                return None;
                            }
                            if (0xD800..0xDC00).contains(&code) {
                                if !self.eat(b"\\u") {
                                    return None;
                                }
                                let low = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&low) {
                                    return None;
                                }
                                code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                            }
                            let ch = char::from_u32(code)?;
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        }
                        _ => return None,
                    }
                }
                other => out.push(other),
            }
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.text.get(self.at..self.at + 4)?;
        let text = std::str::from_utf8(digits).ok()?;
        self.at += 4;
        u32::from_str_radix(text, 16).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use rallymq_codec::{TopicName, UserProperty};

    fn message(topic: &str, payload: &[u8]) -> Message {
        Message::new(TopicName::new(topic).unwrap(), payload.to_vec())
    }

    fn render(format: &str, message: &Message) -> String {
        let printer = Printer {
            style: Style::Format(Format::parse(format).unwrap()),
            eol: false,
            pretty: false,
        };
        let context = Context {
            packet_id: 7,
            now: Local.timestamp_opt(1_700_000_000, 123_456_789).unwrap(),
        };
        String::from_utf8(printer.render(message, &context, &mut Vec::new())).unwrap()
    }

    // Expected outputs below are mosquitto_sub 2.0.11's for the same messages and formats.

    #[test]
    fn widths_precision_and_payload_quirks_as_mosquitto_sub() {
        let mut abc = message("e/3", b"abc");
        abc.retain = true;
        assert_eq!(
            render("[%-p|%-x|%-6p|%06p|%-5l|%5q|%-3r|%5m]", &abc),
            "[abc   |616263   |abc   |000abc|3    |0|1|    7]"
        );
        let v1 = message("v/1", "é{\"k\":1}".as_bytes());
        assert_eq!(
            render("%10t|%-10t|%.2t|%5.3t|%08l|%-8l|%04E|%10x|%3p|", &v1),
            "       v/1|v/1       |v/|  v/1|00000009|9       |0000|  c3a97b22|é{|"
        );
        assert_eq!(
            render("%x %X %% @@ \\t\\\\", &abc),
            "616263 616263 % @ \t\\"
        );
    }

    #[test]
    fn mqtt_5_properties_as_mosquitto_sub_prints_them() {
        let mut m = message("v/1", b"x");
        m.properties.content_type = Some(rallymq_codec::MqttString::new("text/x").unwrap());
        m.properties.correlation_data = Some(bytes::Bytes::from_static(b"cd"));
        m.properties.message_expiry_interval = Some(100);
        m.properties.response_topic = Some(TopicName::new("r/t").unwrap());
        m.properties.payload_format_indicator = Some(rallymq_codec::PayloadFormat::Utf8);
        m.properties.user_properties = vec![
            UserProperty::new("k1", "v1").unwrap(),
            UserProperty::new("k2", "v2").unwrap(),
        ];
        assert_eq!(
            render("%A|%C|%D|%E|%F|%P|%R|%S|", &m),
            "|text/x|cd|100|1|k1:v1 k2:v2|r/t||"
        );
        let json = render("%j", &m);
        assert!(
            json.ends_with(
                r#""topic":"v/1","qos":0,"retain":0,"payloadlen":1,"properties":{"payload-format-indicator":1,"message-expiry-interval":100,"response-topic":"r/t","correlation-data":"cd","content-type":"text/x","user-properties":{"k1":"v1","k2":"v2"}},"payload":"x"}"#
            ),
            "{json}"
        );
    }

    #[test]
    fn json_as_cjson_prints_it() {
        let m = message(
            "e/2",
            br#"  {"a" : [1.50, -0, 1e20, 1e-7, 0.1, 12345678901234567, true, null, "\u00e9\/"], "b":{}, "c":[]} "#,
        );
        let json = render("%J", &m);
        assert!(
            json.ends_with(
                r#""payloadlen":97,"payload":{"a":[1.5,-0,1e+20,1e-07,0.1,12345678901234568,true,null,"é/"],"b":{},"c":[]}}"#
            ),
            "{json}"
        );
        let escaped = render("%j", &message("n/1", b"a\x01\tb\n\"\\"));
        assert!(
            escaped.ends_with(r#""payload":"a\u0001\tb\n\"\\"}"#),
            "{escaped}"
        );
        let truncated = render("%j", &message("n/1", b"a\0b"));
        assert!(truncated.ends_with(r#""payloadlen":3,"payload":"a"}"#));
        let empty = render("%j", &message("n/1", b""));
        assert!(empty.ends_with(r#""payloadlen":0,"payload":null}"#));
        let mut errors = Vec::new();
        let printer = Printer {
            style: Style::Format(Format::parse("[%J]").unwrap()),
            eol: true,
            pretty: false,
        };
        let context = Context {
            packet_id: 0,
            now: Local::now(),
        };
        let out = printer.render(&message("e/3", b"abc"), &context, &mut errors);
        assert_eq!(out, b"[]\n");
        assert_eq!(
            errors,
            ["Error: Message payload is not valid JSON on topic e/3."]
        );
    }

    #[test]
    fn pretty_json_as_cjson_prints_it() {
        let printer = Printer {
            style: Style::Format(Format::parse("%J").unwrap()),
            eol: false,
            pretty: true,
        };
        let mut m = message("e/2", br#"{"a":[1, 2], "b":{}, "c":[]}"#);
        m.qos = QoS::AtLeastOnce;
        let context = Context {
            packet_id: 2,
            now: Local::now(),
        };
        let out = String::from_utf8(printer.render(&m, &context, &mut Vec::new())).unwrap();
        let body = out.split_once("\n\t\"topic\"").unwrap().1;
        assert_eq!(
            body,
            ":\t\"e/2\",\n\t\"qos\":\t1,\n\t\"retain\":\t0,\n\t\"payloadlen\":\t28,\n\t\"mid\":\t2,\n\t\"payload\":\t{\n\t\t\"a\":\t[1, 2],\n\t\t\"b\":\t{\n\t\t},\n\t\t\"c\":\t[]\n\t}\n}"
        );
    }

    #[test]
    fn time_sequences() {
        let m = message("t", b"x");
        let now = Local.timestamp_opt(1_700_000_000, 123_456_789).unwrap();
        let expected = format!(
            "{} 123456789 {} 1700000000.123456789 %Q|{}|1700000000|%E|%|{}",
            now.format("%Y-%m"),
            now.format("%Y-%m-%dT%H:%M:%S%z"),
            now.format("%a %b %e %H:%M:%S %Y"),
            now.format("%m/%d/%y|%H:%M:%S"),
        );
        // As glibc's strftime: an unknown specifier (Q, E alone) is printed as it is.
        assert_eq!(render("@Y-@m @N %I %U @Q|@c|@s|@E|@%|@x|@X", &m), expected);
        let tst = render("%j", &m);
        assert!(
            tst.starts_with(&format!(
                "{{\"tst\":\"{}.123456Z{}\"",
                now.format("%Y-%m-%dT%H:%M:%S"),
                now.format("%z")
            )),
            "{tst}"
        );
    }

    #[test]
    fn plain_and_verbose_as_mosquitto_sub() {
        let context = Context {
            packet_id: 0,
            now: Local::now(),
        };
        let print = |style: Style, eol: bool, m: &Message| {
            let printer = Printer {
                style,
                eol,
                pretty: false,
            };
            printer.render(m, &context, &mut Vec::new())
        };
        let empty = message("a/c", b"");
        let full = message("a/b", b"hello");
        assert_eq!(print(Style::Payload, true, &full), b"hello\n");
        assert_eq!(print(Style::Payload, true, &empty), b"");
        assert_eq!(print(Style::Verbose, true, &full), b"a/b hello\n");
        assert_eq!(print(Style::Verbose, true, &empty), b"a/c (null)\n");
        assert_eq!(print(Style::Verbose, false, &full), b"a/b hello");
        assert_eq!(print(Style::Verbose, false, &empty), b"");
    }

    #[test]
    fn formats_mosquitto_sub_refuses() {
        for (format, error) in [
            ("%", "Incomplete format specifier."),
            ("abc%-", "Incomplete format specifier."),
            ("%5", "Incomplete format specifier."),
            ("%.", "Incomplete format specifier."),
            ("%k", "Invalid format specifier 'k'."),
            ("@", "Incomplete format specifier."),
            ("\\", "Incomplete escape specifier."),
            ("\\q", "Invalid escape specifier 'q'."),
        ] {
            assert_eq!(Format::parse(format), Err(error.to_owned()), "{format}");
        }
    }
}
