//! Cedar values of the model, prepared ahead of the hot path: entity uids, evaluated
//! attribute values and the request context.
//!
//! The snapshot converts each principal and entity once (when it is built or patched), so a
//! decision only clones prepared values and never parses a name or evaluates a restricted
//! expression. This works on `cedar-policy-core`'s AST types, the same version `cedar-policy`
//! pins, reached through the `From`/`AsRef` bridges of `cedar-policy`'s public API.
//!
//! Attribute names and types here follow `policies/schema.cedarschema`; the policy test
//! cases in `policies/tests/` exercise every one of them through the decision core.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, LazyLock};

use cedar_policy_core::ast::{
    Eid, Entity, EntityType, EntityUID, Name, PartialValue, RestrictedExpr, Value,
};
use cedar_policy_core::evaluator::RestrictedEvaluator;
use cedar_policy_core::extensions::Extensions;
use smol_str::SmolStr;

use crate::decision::{ContextValue, RequestFacts};
use portcullis_model::{EntityRecord, EntityRef, Principal, PrincipalKind, PrincipalStatus};

/// Entity types by name, parsed once, with the attributes the schema declares for each
/// that a record may carry beyond the model's own ([`CustomKind`]). Names outside the map
/// are parsed on demand.
#[derive(Debug, Clone, Default)]
pub(crate) struct EntityTypes {
    by_name: HashMap<String, EntityType>,
    custom: HashMap<String, BTreeMap<String, CustomKind>>,
}

/// The Cedar type of a custom attribute: what a stored record's JSON value is read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CustomKind {
    String,
    Long,
    Bool,
    StringSet,
    LongSet,
    /// Declared with a type a record cannot give (records, entities, extensions).
    Unsupported,
}

impl CustomKind {
    fn of(ty: &cedar_policy_core::validator::types::Type) -> Self {
        use cedar_policy_core::validator::types::Type;
        match ty {
            Type::String => Self::String,
            Type::Long => Self::Long,
            Type::Bool(_) => Self::Bool,
            Type::Set {
                element_type: Some(element),
            } => match element.as_ref() {
                Type::String => Self::StringSet,
                Type::Long => Self::LongSet,
                _ => Self::Unsupported,
            },
            _ => Self::Unsupported,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::String => "a String",
            Self::Long => "a Long",
            Self::Bool => "a Bool",
            Self::StringSet => "a Set<String>",
            Self::LongSet => "a Set<Long>",
            Self::Unsupported => "of a type records cannot give",
        }
    }

    /// `value` as a Cedar value of this kind, if it is one.
    fn value(self, value: &serde_json::Value) -> Option<Value> {
        use serde_json::Value as Json;
        let long = |v: &Json| v.as_i64();
        match (self, value) {
            (Self::String, Json::String(s)) => Some(s.as_str().into()),
            (Self::Long, v) => long(v).map(Value::from),
            (Self::Bool, Json::Bool(b)) => Some((*b).into()),
            (Self::StringSet, Json::Array(items)) => items
                .iter()
                .map(|i| i.as_str().map(Value::from))
                .collect::<Option<Vec<_>>>()
                .map(|v| Value::set(v, None)),
            (Self::LongSet, Json::Array(items)) => items
                .iter()
                .map(|i| long(i).map(Value::from))
                .collect::<Option<Vec<_>>>()
                .map(|v| Value::set(v, None)),
            _ => None,
        }
    }
}

/// Attributes Portcullis sets itself on principals and entities; a record cannot carry
/// them as custom attributes.
const RESERVED: &[&str] = &[
    "status",
    "tenant",
    "clearance",
    "department",
    "job_title",
    "manager",
    "managers",
    "gdpr_consent",
    "classification",
    "owner",
    "archived",
    "kind",
];

impl EntityTypes {
    /// The schema's entity types.
    pub(crate) fn from_schema(schema: &cedar_policy::Schema) -> Self {
        let by_name = schema
            .entity_types()
            .map(|t| (t.to_string(), AsRef::<EntityType>::as_ref(t).clone()))
            .collect();
        let validator: &cedar_policy_core::validator::ValidatorSchema = schema.as_ref();
        let custom = validator
            .entity_types()
            .map(|t| {
                let attrs = t
                    .attributes()
                    .iter()
                    .filter(|(name, _)| !RESERVED.contains(&name.as_str()))
                    .map(|(name, a)| (name.to_string(), CustomKind::of(&a.attr_type)))
                    .collect();
                (t.name().to_string(), attrs)
            })
            .collect();
        Self { by_name, custom }
    }

    /// Why `attrs` cannot be the custom attributes of a record of `type_name`, one
    /// `(attribute, message)` each: not declared for the type, reserved, or not of the
    /// declared type.
    pub(crate) fn custom_problems(
        &self,
        type_name: &str,
        attrs: &BTreeMap<String, serde_json::Value>,
    ) -> Vec<(String, String)> {
        let declared = self.custom.get(type_name);
        attrs
            .iter()
            .filter_map(|(name, value)| {
                let problem = if RESERVED.contains(&name.as_str()) {
                    String::from("is set by Portcullis, not by a record")
                } else {
                    match declared.and_then(|d| d.get(name)) {
                        None => format!("is not an attribute of `{type_name}` in the schema"),
                        Some(kind) if kind.value(value).is_some() => return None,
                        Some(kind) => format!("must be {} (the schema says so)", kind.name()),
                    }
                };
                Some((name.clone(), problem))
            })
            .collect()
    }

    /// The custom attributes of a record of `type_name` as Cedar values: those the schema
    /// declares, of its type (a record that is not is refused on write; one stored before
    /// the schema changed loses the attribute rather than fail every decision).
    fn custom_attrs(
        &self,
        type_name: &str,
        attrs: &BTreeMap<String, serde_json::Value>,
    ) -> impl Iterator<Item = (SmolStr, PartialValue)> {
        let declared = self.custom.get(type_name);
        attrs.iter().filter_map(move |(name, value)| {
            let kind = declared?.get(name)?;
            Some((SmolStr::new(name), PartialValue::Value(kind.value(value)?)))
        })
    }

    /// The Cedar uid of `entity`; `None` if its type is not a valid Cedar name (the model
    /// refuses such references on input, so this does not happen for stored data).
    pub(crate) fn uid(&self, entity: &EntityRef) -> Option<EntityUID> {
        let ty = match self.by_name.get(entity.type_name()) {
            Some(ty) => ty.clone(),
            None => EntityType::from_normalized_str(entity.type_name()).ok()?,
        };
        Some(EntityUID::from_components(ty, Eid::new(entity.id()), None))
    }

    fn user_uid(&self, id: &str) -> Option<EntityUID> {
        self.uid(&portcullis_model::principal_ref(PrincipalKind::User, id))
    }
}

/// Evaluated attributes, ready to be placed on an entity.
pub(crate) type Attrs = Vec<(SmolStr, PartialValue)>;

fn attr(name: &'static str, value: impl Into<Value>) -> (SmolStr, PartialValue) {
    (SmolStr::new_static(name), PartialValue::Value(value.into()))
}

/// A principal as Cedar sees it, minus what depends on other principals (its groups'
/// closure, the manager chain) or on the request (its roles).
#[derive(Debug, Clone)]
pub(crate) struct CedarPrincipal {
    /// `User::"alice"`.
    pub(crate) uid: Option<EntityUID>,
    /// Attributes of its own record.
    pub(crate) attrs: Attrs,
}

impl CedarPrincipal {
    pub(crate) fn new(principal: &Principal, types: &EntityTypes) -> Self {
        let mut attrs: Attrs = Vec::with_capacity(8);
        attrs.push(attr("status", principal.status.as_str()));
        if let Some(tenant) = &principal.tenant {
            attrs.push(attr("tenant", tenant.as_str()));
        }
        attrs.push(attr("clearance", principal.attributes.clearance));
        if principal.kind == PrincipalKind::User {
            let a = &principal.attributes;
            if let Some(d) = &a.department {
                attrs.push(attr("department", d.as_str()));
            }
            if let Some(j) = &a.job_title {
                attrs.push(attr("job_title", j.as_str()));
            }
            if let Some(m) = a.manager.as_deref().and_then(|m| types.user_uid(m)) {
                attrs.push(attr("manager", m));
            }
            attrs.push(attr("gdpr_consent", a.gdpr_consent_at.is_some()));
        }
        attrs.extend(types.custom_attrs(principal.kind.cedar_type(), &principal.attributes.custom));
        Self {
            uid: types.uid(&principal.entity_ref()),
            attrs,
        }
    }
}

/// A stored resource entity as Cedar sees it, minus what depends on its ancestors
/// (effective tenant and archived flag).
#[derive(Debug, Clone)]
pub(crate) struct CedarEntity {
    /// `Document::"d1"`.
    pub(crate) uid: Option<EntityUID>,
    /// Attributes of its own record.
    pub(crate) attrs: Attrs,
}

impl CedarEntity {
    pub(crate) fn new(record: &EntityRecord, types: &EntityTypes) -> Self {
        let a = &record.attributes;
        let mut attrs: Attrs = Vec::with_capacity(5);
        if let Some(c) = a.classification {
            attrs.push(attr("classification", c));
        }
        if let Some(t) = &a.tenant {
            attrs.push(attr("tenant", t.as_str()));
        }
        if let Some(k) = &a.kind {
            attrs.push(attr("kind", k.as_str()));
        }
        if let Some(o) = a.owner.as_deref().and_then(|o| types.user_uid(o)) {
            attrs.push(attr("owner", o));
        }
        attrs.extend(types.custom_attrs(record.uid.type_name(), &a.custom));
        Self {
            uid: types.uid(&record.uid),
            attrs,
        }
    }
}

/// The attributes of a principal-typed resource the store does not know: they satisfy the
/// schema and grant nothing (deleted, no clearance, nobody manages it).
pub(crate) fn unknown_principal_attrs() -> Attrs {
    vec![
        attr("status", PrincipalStatus::Deleted.as_str()),
        attr("clearance", 0_i64),
        attr("managers", Value::set([], None)),
        attr("gdpr_consent", false),
    ]
}

/// The `managers` attribute: every manager up the org tree.
pub(crate) fn managers_attr(
    managers: impl IntoIterator<Item = EntityUID>,
) -> (SmolStr, PartialValue) {
    attr(
        "managers",
        Value::set(managers.into_iter().map(Value::from), None),
    )
}

/// An attribute set to a boolean (the effective `archived` flag).
pub(crate) fn bool_attr(name: &'static str, value: bool) -> (SmolStr, PartialValue) {
    attr(name, value)
}

/// An attribute set to a string (the effective `tenant`).
pub(crate) fn string_attr(name: &'static str, value: &str) -> (SmolStr, PartialValue) {
    attr(name, value)
}

/// An entity whose `ancestors` are already transitively closed. Cedar's `in` looks at
/// parents and indirect ancestors alike, so the closure goes into `parents`.
pub(crate) fn entity(
    uid: EntityUID,
    attrs: impl IntoIterator<Item = (SmolStr, PartialValue)>,
    ancestors: HashSet<EntityUID>,
) -> Entity {
    Entity::new_with_attr_partial_value(uid, attrs, HashSet::new(), ancestors, [])
}

/// The name of Cedar's `ip` extension constructor, parsed once.
static IP_CONSTRUCTOR: LazyLock<Option<Name>> =
    LazyLock::new(|| Name::parse_unqualified_name("ip").ok());

/// A set of request-context attributes (`policies/schema.cedarschema`'s `RequestContext`):
/// those the policies of an action can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct ContextAttrs(u16);

/// Each attribute of the context by name.
const CONTEXT_ATTRIBUTES: [(&str, ContextAttrs); 9] = [
    ("hour", ContextAttrs::HOUR),
    ("minute", ContextAttrs::MINUTE),
    ("weekday", ContextAttrs::WEEKDAY),
    ("risk_score", ContextAttrs::RISK_SCORE),
    ("mfa", ContextAttrs::MFA),
    ("device_trusted", ContextAttrs::DEVICE_TRUSTED),
    ("band", ContextAttrs::BAND),
    ("device_id", ContextAttrs::DEVICE_ID),
    ("ip", ContextAttrs::IP),
];

/// Whether `name` is an attribute of the context Portcullis sets for every request (not
/// one a route takes from it).
pub(crate) fn is_fixed_context_attribute(name: &str) -> bool {
    CONTEXT_ATTRIBUTES.iter().any(|(n, _)| *n == name)
}

impl ContextAttrs {
    pub(crate) const HOUR: Self = Self(1);
    pub(crate) const MINUTE: Self = Self(1 << 1);
    pub(crate) const WEEKDAY: Self = Self(1 << 2);
    pub(crate) const RISK_SCORE: Self = Self(1 << 3);
    pub(crate) const MFA: Self = Self(1 << 4);
    pub(crate) const DEVICE_TRUSTED: Self = Self(1 << 5);
    pub(crate) const BAND: Self = Self(1 << 6);
    pub(crate) const DEVICE_ID: Self = Self(1 << 7);
    pub(crate) const IP: Self = Self(1 << 8);
    /// The attributes routes take from the request ([`RequestFacts::extra`]): any name that
    /// is not one of the fixed ones.
    pub(crate) const EXTRA: Self = Self(1 << CONTEXT_ATTRIBUTES.len());
    /// Every attribute.
    pub(crate) const ALL: Self = Self((1 << (CONTEXT_ATTRIBUTES.len() + 1)) - 1);

    /// This set and the attribute `name`; a name that is not one of the fixed attributes
    /// is one taken from the request ([`Self::EXTRA`]).
    pub(crate) fn with(self, name: &str) -> Self {
        CONTEXT_ATTRIBUTES
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(self.union(Self::EXTRA), |(_, attr)| self.union(*attr))
    }

    /// Both sets.
    pub(crate) fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// The attribute's name, for a set of exactly one attribute.
    fn name(self) -> Option<&'static str> {
        CONTEXT_ATTRIBUTES
            .iter()
            .find(|(_, attr)| *attr == self)
            .map(|(name, _)| *name)
    }

    /// Whether every attribute of `attrs` is in this set.
    pub(crate) fn contains(self, attrs: Self) -> bool {
        self.0 & attrs.0 == attrs.0
    }

    /// Whether any attribute of `attrs` is in this set.
    pub(crate) fn intersects(self, attrs: Self) -> bool {
        self.0 & attrs.0 != 0
    }
}

/// The request context of `policies/schema.cedarschema`'s `RequestContext`, with the
/// attributes of `wanted` only: one that no policy reads is neither computed nor carried
/// (the client IP's `ip` value above all, which Cedar's extension parses).
pub(crate) fn context(
    facts: &RequestFacts,
    device_trusted: bool,
    wanted: ContextAttrs,
) -> Result<cedar_policy_core::ast::Context, String> {
    let mut record: BTreeMap<SmolStr, Value> = BTreeMap::new();
    let mut put = |attr: ContextAttrs, value: Value| {
        if wanted.contains(attr)
            && let Some(name) = attr.name()
        {
            record.insert(SmolStr::new_static(name), value);
        }
    };
    let time = &facts.local_time;
    put(ContextAttrs::HOUR, i64::from(time.hour).into());
    put(ContextAttrs::MINUTE, i64::from(time.minute).into());
    put(ContextAttrs::WEEKDAY, i64::from(time.weekday).into());
    put(ContextAttrs::RISK_SCORE, facts.risk_score.into());
    put(ContextAttrs::MFA, facts.mfa.into());
    put(ContextAttrs::DEVICE_TRUSTED, device_trusted.into());
    put(ContextAttrs::BAND, facts.band.as_str().into());
    if let Some(d) = &facts.device_id {
        put(ContextAttrs::DEVICE_ID, d.as_str().into());
    }
    if let Some(ip) = facts
        .ip
        .as_deref()
        .filter(|_| wanted.contains(ContextAttrs::IP))
    {
        let constructor = IP_CONSTRUCTOR
            .clone()
            .ok_or_else(|| String::from("the `ip` extension is not available"))?;
        let call = RestrictedExpr::call_extension_fn(constructor, [RestrictedExpr::val(ip)]);
        let value = RestrictedEvaluator::new(Extensions::all_available())
            .interpret(call.as_borrowed())
            .map_err(|e| format!("client ip `{ip}`: {e}"))?;
        put(ContextAttrs::IP, value);
    }
    if wanted.contains(ContextAttrs::EXTRA) {
        for (name, value) in &facts.extra {
            // Routes never name a fixed attribute (checked when they are compiled).
            record
                .entry(SmolStr::new(name))
                .or_insert_with(|| match value {
                    ContextValue::String(s) => s.as_str().into(),
                    ContextValue::Long(n) => (*n).into(),
                    ContextValue::Bool(b) => (*b).into(),
                });
        }
    }
    Ok(cedar_policy_core::ast::Context::Value(Arc::new(record)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_attributes_are_typed_by_the_schema_and_every_bad_one_is_named() {
        let (schema, _) = cedar_policy::Schema::from_cedarschema_str(
            "entity User { status: String, name?: String, age?: Long, vip?: Bool, \
             tags?: Set<String>, scores?: Set<Long>, boss?: User, address?: { city: String } };",
        )
        .unwrap();
        let types = EntityTypes::from_schema(&schema);
        let attrs = |value: serde_json::Value| -> BTreeMap<String, serde_json::Value> {
            serde_json::from_value(value).unwrap()
        };
        let good = attrs(serde_json::json!({
            "name": "Ann", "age": 41, "vip": true, "tags": ["a", "b"], "scores": [1, 2]
        }));
        assert!(types.custom_problems("User", &good).is_empty());
        let carried: Vec<String> = types
            .custom_attrs("User", &good)
            .map(|(name, _)| name.to_string())
            .collect();
        assert_eq!(carried, ["age", "name", "scores", "tags", "vip"]);

        let bad = attrs(serde_json::json!({
            "name": 7, "age": "41", "vip": "yes", "tags": ["a", 1], "scores": [1.5],
            "boss": "bob", "address": {"city": "Oslo"}, "status": "active", "shoe_size": 44
        }));
        let problems = types.custom_problems("User", &bad);
        let named: Vec<&str> = problems.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            named,
            [
                "address",
                "age",
                "boss",
                "name",
                "scores",
                "shoe_size",
                "status",
                "tags",
                "vip"
            ]
        );
        // A stored value the schema no longer allows is left out, not carried as it is.
        assert_eq!(types.custom_attrs("User", &bad).count(), 0);
        assert_eq!(types.custom_problems("Document", &good).len(), 5);
    }

    #[test]
    fn context_attrs_hold_exactly_what_was_added() {
        let none = ContextAttrs::default();
        let some = none.with("ip").with("mfa");
        assert_eq!(some, ContextAttrs::IP.union(ContextAttrs::MFA));
        assert_eq!(
            none.with("tier"),
            ContextAttrs::EXTRA,
            "a route's own attribute"
        );
        for (name, attr) in CONTEXT_ATTRIBUTES {
            // One bit per attribute, each its own.
            assert_eq!(attr.0.count_ones(), 1, "{name}");
            assert_eq!(none.with(name), attr, "{name}");
            assert_eq!(attr.name(), Some(name));
            assert!(!none.contains(attr) && !none.intersects(attr));
            assert_eq!(some.contains(attr), name == "ip" || name == "mfa", "{name}");
            assert!(ContextAttrs::ALL.contains(attr));
        }
        assert!(some.intersects(ContextAttrs::IP.union(ContextAttrs::HOUR)));
        assert!(!some.contains(ContextAttrs::IP.union(ContextAttrs::HOUR)));
        assert_eq!(
            CONTEXT_ATTRIBUTES
                .iter()
                .fold(ContextAttrs::EXTRA, |set, (_, attr)| set.union(*attr)),
            ContextAttrs::ALL
        );
        assert!(
            !CONTEXT_ATTRIBUTES
                .iter()
                .any(|(_, a)| a.intersects(ContextAttrs::EXTRA))
        );
    }

    #[test]
    fn the_context_carries_the_wanted_attributes_only() {
        let facts = RequestFacts {
            now: 0,
            local_time: crate::decision::LocalTime {
                hour: 10,
                minute: 5,
                weekday: 2,
            },
            risk_score: 40,
            mfa: true,
            device_id: Some(String::from("laptop-1")),
            ip: Some(String::from("not an address")),
            band: String::from("RED"),
            extra: vec![
                (
                    String::from("tier"),
                    ContextValue::String(String::from("gold")),
                ),
                (String::from("hour"), ContextValue::Long(99)),
            ],
        };
        let names = |wanted: ContextAttrs| -> Vec<String> {
            let cedar_policy_core::ast::Context::Value(record) =
                context(&facts, true, wanted).unwrap()
            else {
                panic!("a context of values")
            };
            record.keys().map(ToString::to_string).collect()
        };
        assert_eq!(
            names(ContextAttrs(ContextAttrs::ALL.0 & !ContextAttrs::IP.0)),
            [
                "band",
                "device_id",
                "device_trusted",
                "hour",
                "mfa",
                "minute",
                "risk_score",
                "tier",
                "weekday"
            ]
        );
        // A route's attribute never replaces a fixed one.
        let cedar_policy_core::ast::Context::Value(record) =
            context(&facts, true, ContextAttrs::HOUR.union(ContextAttrs::EXTRA)).unwrap()
        else {
            panic!("a context of values")
        };
        assert_eq!(record.get("hour"), Some(&Value::from(10_i64)));
        assert_eq!(names(ContextAttrs::HOUR), ["hour"]);
        assert_eq!(
            names(ContextAttrs::HOUR.union(ContextAttrs::MFA)),
            ["hour", "mfa"]
        );
        assert!(names(ContextAttrs::default()).is_empty());
        // The address is parsed, and refused, only when it is wanted.
        let refused = context(&facts, true, ContextAttrs::ALL).unwrap_err();
        assert!(refused.contains("client ip `not an address`"), "{refused}");
    }
}
