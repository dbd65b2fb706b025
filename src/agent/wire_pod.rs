//! A served pod read straight into the compiler's model: one pass over the
//! page's JSON that keeps the dozen fields the reduction reads (name,
//! namespace, labels, resourceVersion, uid; nodeName, hostNetwork, the
//! containers' and init containers' ports and restartPolicy; phase,
//! podIP, podIPs), borrows their strings from the page where it can, and
//! parses past everything else without allocating it. No `serde_json`
//! value and no `k8s_openapi` object is built for a pod: at 150,000 pods
//! of about 5 KB each that was most of the agent's start.
//!
//! Every kept field is read leniently: a value of the wrong type (a label
//! that is not a string, `hostNetwork: "yes"`) never fails the page. It is
//! parsed past and makes its object invalid, naming the field, so one bad
//! pod is skipped with a warning and its list or watch goes on, as kube's
//! `DeserializeGuard` would have it. What a kept field may hold is what
//! the `k8s_openapi` types accept (null is absent; a list item may not be
//! null; the last of a repeated key wins); the tests compare the two
//! readers on the same objects.

use k8s_openapi::api::core::v1::Pod;
use kube::core::ObjectMeta;
use kube::Resource;
use policy_compiler::convert::{self, PodFields, PortFields};
use policy_compiler::{model, ObjectError};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;

/// A pod as the watcher yields it: the metadata the watcher and the
/// Events about invalid objects need, and the pod reduced to the model
/// (or why it is not valid).
#[derive(Clone, Debug)]
pub struct WirePod {
    metadata: ObjectMeta,
    /// `None` once taken.
    reduced: Option<Result<model::Pod, ObjectError>>,
}

impl WirePod {
    /// Moves the reduced pod out (or the error naming the field that made
    /// it invalid), leaving the metadata.
    pub fn take(&mut self) -> Result<model::Pod, ObjectError> {
        self.reduced.take().unwrap_or_else(|| {
            Err(ObjectError {
                file: None,
                kind: "Pod".into(),
                object: format!(
                    "{}/{}",
                    self.metadata.namespace.as_deref().unwrap_or_default(),
                    self.metadata.name.as_deref().unwrap_or_default()
                ),
                field: "(object)".into(),
                message: "already taken".into(),
            })
        })
    }
}

impl Resource for WirePod {
    type DynamicType = ();
    type Scope = <Pod as Resource>::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        Pod::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        Pod::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        Pod::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        Pod::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl<'de> Deserialize<'de> for WirePod {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut wrong = None;
        let raw = Object::<RawPod>::new(Path::Root, &mut wrong)
            .deserialize(d)?
            .unwrap_or_default();
        Ok(raw.reduce(wrong))
    }
}

/// Where a value is in its object, rendered only for an error.
#[derive(Clone, Copy)]
enum Path<'a> {
    Root,
    Field(&'a Path<'a>, &'a str),
    Item(&'a Path<'a>, usize),
    Key(&'a Path<'a>, &'a str),
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Path::Root => Ok(()),
            Path::Field(Path::Root, name) => f.write_str(name),
            Path::Field(up, name) => write!(f, "{up}.{name}"),
            Path::Item(up, i) => write!(f, "{up}[{i}]"),
            Path::Key(up, key) => write!(f, "{up}[{key:?}]"),
        }
    }
}

/// The first kept field of the wrong type: its path and what was wrong.
type Wrong = Option<(String, String)>;

fn record(wrong: &mut Wrong, at: Path<'_>, message: String) {
    if wrong.is_none() {
        let field = match at {
            Path::Root => "(object)".to_string(),
            at => at.to_string(),
        };
        *wrong = Some((field, message));
    }
}

/// A map key, borrowed from the page unless it holds an escape.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Scalar::deserialize(d)? {
            Scalar::Str(s) => Ok(Key(s)),
            other => Err(de::Error::custom(format!(
                "a map key is {}, not a string",
                other.what()
            ))),
        }
    }
}

/// Any JSON value, kept if it is a scalar; a map or a list is parsed past.
enum Scalar<'de> {
    Null,
    Bool(bool),
    Int(i64),
    /// Above `i64::MAX`, or a fraction: never a valid value here.
    OtherNumber,
    Str(Cow<'de, str>),
    Map,
    Seq,
}

impl Scalar<'_> {
    fn what(&self) -> &'static str {
        match self {
            Scalar::Null => "null",
            Scalar::Bool(_) => "a boolean",
            Scalar::Int(_) | Scalar::OtherNumber => "a number",
            Scalar::Str(_) => "a string",
            Scalar::Map => "a map",
            Scalar::Seq => "a list",
        }
    }
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Null)
    }

    fn visit_none<E>(self) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Scalar<'de>, D::Error> {
        Scalar::deserialize(d)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Int(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Scalar<'de>, E> {
        Ok(i64::try_from(v).map_or(Scalar::OtherNumber, Scalar::Int))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::OtherNumber)
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Map)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Seq)
    }
}

/// Reads the value at `at` as a string; null is absent, another type is
/// recorded as wrong.
fn text<'de, A: MapAccess<'de>>(
    map: &mut A,
    at: Path<'_>,
    wrong: &mut Wrong,
) -> Result<Option<Cow<'de, str>>, A::Error> {
    Ok(match map.next_value::<Scalar<'de>>()? {
        Scalar::Null => None,
        Scalar::Str(s) => Some(s),
        other => {
            record(
                wrong,
                at,
                format!("expected a string, found {}", other.what()),
            );
            None
        }
    })
}

fn flag<'de, A: MapAccess<'de>>(
    map: &mut A,
    at: Path<'_>,
    wrong: &mut Wrong,
) -> Result<Option<bool>, A::Error> {
    Ok(match map.next_value::<Scalar<'de>>()? {
        Scalar::Null => None,
        Scalar::Bool(b) => Some(b),
        other => {
            record(
                wrong,
                at,
                format!("expected a boolean, found {}", other.what()),
            );
            None
        }
    })
}

fn int32<'de, A: MapAccess<'de>>(
    map: &mut A,
    at: Path<'_>,
    wrong: &mut Wrong,
) -> Result<Option<i32>, A::Error> {
    Ok(match map.next_value::<Scalar<'de>>()? {
        Scalar::Null => None,
        Scalar::Int(n) => match i32::try_from(n) {
            Ok(n) => Some(n),
            Err(_) => {
                record(
                    wrong,
                    at,
                    format!("{n} is out of range of a 32-bit integer"),
                );
                None
            }
        },
        other => {
            record(
                wrong,
                at,
                format!("expected an integer, found {}", other.what()),
            );
            None
        }
    })
}

/// A map of the pod whose kept keys are read by [`Fields::field`].
trait Fields<'de>: Default {
    /// Reads the value of `key` (or parses past it).
    fn field<A: MapAccess<'de>>(
        &mut self,
        key: Cow<'de, str>,
        map: &mut A,
        at: Path<'_>,
        wrong: &mut Wrong,
    ) -> Result<(), A::Error>;
}

/// An object of the served pod with named fields: it reads the ones it
/// keeps, and every other field is parsed past here, in one place.
trait Record<'de>: Default {
    /// Reads the value of field `key` at `here` if it is one this record
    /// keeps; false leaves the value unread.
    fn kept<A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
        here: Path<'_>,
        wrong: &mut Wrong,
    ) -> Result<bool, A::Error>;
}

impl<'de, R: Record<'de>> Fields<'de> for R {
    fn field<A: MapAccess<'de>>(
        &mut self,
        key: Cow<'de, str>,
        map: &mut A,
        at: Path<'_>,
        wrong: &mut Wrong,
    ) -> Result<(), A::Error> {
        if !self.kept(&key, map, Path::Field(&at, &key), wrong)? {
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

/// Reads a map into `F`: null is absent, another type is wrong.
struct Object<'w, 'p, F> {
    at: Path<'p>,
    wrong: &'w mut Wrong,
    kept: std::marker::PhantomData<F>,
}

impl<'w, 'p, F> Object<'w, 'p, F> {
    fn new(at: Path<'p>, wrong: &'w mut Wrong) -> Self {
        Object {
            at,
            wrong,
            kept: std::marker::PhantomData,
        }
    }
}

impl<'de, F: Fields<'de>> DeserializeSeed<'de> for Object<'_, '_, F> {
    type Value = Option<F>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<F>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, F: Fields<'de>> Visitor<'de> for Object<'_, '_, F> {
    type Value = Option<F>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<F>, A::Error> {
        let mut out = F::default();
        while let Some(Key(key)) = map.next_key()? {
            out.field(key, &mut map, self.at, &mut *self.wrong)?;
        }
        Ok(Some(out))
    }

    fn visit_unit<E>(self) -> Result<Option<F>, E> {
        Ok(None)
    }

    fn visit_none<E>(self) -> Result<Option<F>, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<F>, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Option<F>, E> {
        Ok(self.not_a_map("a boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Option<F>, E> {
        Ok(self.not_a_map("a number"))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Option<F>, E> {
        Ok(self.not_a_map("a number"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Option<F>, E> {
        Ok(self.not_a_map("a number"))
    }

    fn visit_str<E>(self, _: &str) -> Result<Option<F>, E> {
        Ok(self.not_a_map("a string"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<F>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(self.not_a_map("a list"))
    }
}

impl<F> Object<'_, '_, F> {
    fn not_a_map(self, found: &str) -> Option<F> {
        record(
            self.wrong,
            self.at,
            format!("expected a map, found {found}"),
        );
        None
    }
}

/// Reads a list of maps into `Vec<F>`: null is absent, as is anything
/// else (recorded as wrong); a null item is wrong too.
struct List<'w, 'p, F> {
    at: Path<'p>,
    wrong: &'w mut Wrong,
    kept: std::marker::PhantomData<F>,
}

fn list<'de, F: Fields<'de>, A: MapAccess<'de>>(
    map: &mut A,
    at: Path<'_>,
    wrong: &mut Wrong,
) -> Result<Vec<F>, A::Error> {
    map.next_value_seed(List {
        at,
        wrong,
        kept: std::marker::PhantomData,
    })
}

impl<'de, F: Fields<'de>> DeserializeSeed<'de> for List<'_, '_, F> {
    type Value = Vec<F>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<F>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, F: Fields<'de>> Visitor<'de> for List<'_, '_, F> {
    type Value = Vec<F>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<F>, A::Error> {
        let mut out = Vec::new();
        loop {
            let at = Path::Item(&self.at, out.len());
            match seq.next_element_seed(Object::<F>::new(at, &mut *self.wrong))? {
                None => break,
                Some(Some(item)) => out.push(item),
                Some(None) => {
                    record(self.wrong, at, "expected a map, found null".into());
                    // Keeps the index of the items after it.
                    out.push(F::default());
                }
            }
        }
        Ok(out)
    }

    fn visit_unit<E>(self) -> Result<Vec<F>, E> {
        Ok(Vec::new())
    }

    fn visit_none<E>(self) -> Result<Vec<F>, E> {
        Ok(Vec::new())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Vec<F>, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Vec<F>, E> {
        Ok(self.not_a_list("a boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Vec<F>, E> {
        Ok(self.not_a_list("a number"))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Vec<F>, E> {
        Ok(self.not_a_list("a number"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Vec<F>, E> {
        Ok(self.not_a_list("a number"))
    }

    fn visit_str<E>(self, _: &str) -> Result<Vec<F>, E> {
        Ok(self.not_a_list("a string"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<F>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(self.not_a_list("a map"))
    }
}

impl<F> List<'_, '_, F> {
    fn not_a_list(self, found: &str) -> Vec<F> {
        record(
            self.wrong,
            self.at,
            format!("expected a list, found {found}"),
        );
        Vec::new()
    }
}

/// A map of strings (labels): every value must be a string.
#[derive(Default)]
struct StrMap<'de>(Vec<(Cow<'de, str>, Cow<'de, str>)>);

impl<'de> Fields<'de> for StrMap<'de> {
    fn field<A: MapAccess<'de>>(
        &mut self,
        key: Cow<'de, str>,
        map: &mut A,
        at: Path<'_>,
        wrong: &mut Wrong,
    ) -> Result<(), A::Error> {
        let here = Path::Key(&at, &key);
        match text(map, here, wrong)? {
            Some(v) => self.0.push((key, v)),
            // A wrong type is recorded already (the first wrong field is
            // the one named).
            None => record(wrong, here, "expected a string, found null".into()),
        }
        Ok(())
    }
}

#[derive(Default)]
struct RawPod<'de> {
    metadata: Meta<'de>,
    spec: Spec<'de>,
    status: Status<'de>,
}

#[derive(Default)]
struct Meta<'de> {
    name: Option<Cow<'de, str>>,
    namespace: Option<Cow<'de, str>>,
    labels: Option<StrMap<'de>>,
    resource_version: Option<Cow<'de, str>>,
    uid: Option<Cow<'de, str>>,
}

#[derive(Default)]
struct Spec<'de> {
    node_name: Option<Cow<'de, str>>,
    host_network: Option<bool>,
    containers: Vec<Container<'de>>,
    init_containers: Vec<Container<'de>>,
}

#[derive(Default)]
struct Container<'de> {
    ports: Vec<Port<'de>>,
    restart_policy: Option<Cow<'de, str>>,
}

#[derive(Default)]
struct Port<'de> {
    name: Option<Cow<'de, str>>,
    protocol: Option<Cow<'de, str>>,
    number: Option<i32>,
}

#[derive(Default)]
struct Status<'de> {
    phase: Option<Cow<'de, str>>,
    pod_ip: Option<Cow<'de, str>>,
    pod_ips: Vec<PodIp<'de>>,
}

#[derive(Default)]
struct PodIp<'de> {
    ip: Option<Cow<'de, str>>,
}

impl<'de> Record<'de> for RawPod<'de> {
    fn kept<A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
        here: Path<'_>,
        wrong: &mut Wrong,
    ) -> Result<bool, A::Error> {
        match key {
            "metadata" => {
                self.metadata = map
                    .next_value_seed(Object::new(here, wrong))?
                    .unwrap_or_default();
            }
            "spec" => {
                self.spec = map
                    .next_value_seed(Object::new(here, wrong))?
                    .unwrap_or_default();
            }
            "status" => {
                self.status = map
                    .next_value_seed(Object::new(here, wrong))?
                    .unwrap_or_default();
            }
            // The typed object checks these: a served pod is `v1` `Pod`.
            "apiVersion" | "kind" => {
                let want = if key == "kind" { "Pod" } else { "v1" };
                match text(map, here, wrong)? {
                    Some(v) if v == want => {}
                    found => record(wrong, here, format!("expected {want:?}, found {found:?}")),
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl<'de> Record<'de> for Meta<'de> {
    fn kept<A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
        here: Path<'_>,
        wrong: &mut Wrong,
    ) -> Result<bool, A::Error> {
        match key {
            "name" => self.name = text(map, here, wrong)?,
            "namespace" => self.namespace = text(map, here, wrong)?,
            "resourceVersion" => self.resource_version = text(map, here, wrong)?,
            "uid" => self.uid = text(map, here, wrong)?,
            "labels" => self.labels = map.next_value_seed(Object::new(here, wrong))?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl<'de> Record<'de> for Spec<'de> {
    fn kept<A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
        here: Path<'_>,
        wrong: &mut Wrong,
    ) -> Result<bool, A::Error> {
        match key {
            "nodeName" => self.node_name = text(map, here, wrong)?,
            "hostNetwork" => self.host_network = flag(map, here, wrong)?,
            "containers" => self.containers = list(map, here, wrong)?,
            "initContainers" => self.init_containers = list(map, here, wrong)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl<'de> Record<'de> for Container<'de> {
    fn kept<A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
        here: Path<'_>,
        wrong: &mut Wrong,
    ) -> Result<bool, A::Error> {
        match key {
            "ports" => self.ports = list(map, here, wrong)?,
            "restartPolicy" => self.restart_policy = text(map, here, wrong)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl<'de> Record<'de> for Port<'de> {
    fn kept<A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
        here: Path<'_>,
        wrong: &mut Wrong,
    ) -> Result<bool, A::Error> {
        match key {
            "name" => self.name = text(map, here, wrong)?,
            "protocol" => self.protocol = text(map, here, wrong)?,
            "containerPort" => self.number = int32(map, here, wrong)?,
            // hostPort is a kept field of the typed object too.
            "hostPort" => {
                int32(map, here, wrong)?;
            }
            "hostIP" => {
                text(map, here, wrong)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl<'de> Record<'de> for Status<'de> {
    fn kept<A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
        here: Path<'_>,
        wrong: &mut Wrong,
    ) -> Result<bool, A::Error> {
        match key {
            "phase" => self.phase = text(map, here, wrong)?,
            "podIP" => self.pod_ip = text(map, here, wrong)?,
            "podIPs" => self.pod_ips = list(map, here, wrong)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl<'de> Record<'de> for PodIp<'de> {
    fn kept<A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
        here: Path<'_>,
        wrong: &mut Wrong,
    ) -> Result<bool, A::Error> {
        match key {
            "ip" => self.ip = text(map, here, wrong)?,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

impl RawPod<'_> {
    fn reduce(self, wrong: Wrong) -> WirePod {
        let m = &self.metadata;
        let metadata = ObjectMeta {
            name: m.name.as_deref().map(str::to_owned),
            namespace: m.namespace.as_deref().map(str::to_owned),
            resource_version: m.resource_version.as_deref().map(str::to_owned),
            uid: m.uid.as_deref().map(str::to_owned),
            ..ObjectMeta::default()
        };
        let reduced = match wrong {
            Some((field, message)) => Err(self.undecodable(field, message)),
            None => convert::pod_fields(self.fields(), None),
        };
        WirePod {
            metadata,
            reduced: Some(reduced),
        }
    }

    /// The error for a kept field of the wrong type, as the converter
    /// names its object.
    fn undecodable(&self, field: String, message: String) -> ObjectError {
        let m = &self.metadata;
        let ns = m.namespace.as_deref().filter(|n| !n.is_empty());
        ObjectError {
            file: None,
            kind: "Pod".into(),
            object: format!(
                "{}/{}",
                ns.unwrap_or("default"),
                m.name.as_deref().unwrap_or_default()
            ),
            field,
            message: format!("cannot be read: {message}"),
        }
    }

    fn fields(&self) -> PodFields<'_> {
        let (m, spec, status) = (&self.metadata, &self.spec, &self.status);
        let sidecars = spec
            .init_containers
            .iter()
            .enumerate()
            .filter(|(_, c)| convert::serves(c.restart_policy.as_deref()))
            .map(|(i, c)| ("initContainers", i, c));
        let ports = spec
            .containers
            .iter()
            .enumerate()
            .map(|(i, c)| ("containers", i, c))
            .chain(sidecars)
            .flat_map(|(list, container, c)| {
                c.ports
                    .iter()
                    .enumerate()
                    .map(move |(index, p)| PortFields {
                        list,
                        container,
                        index,
                        name: p.name.as_deref(),
                        protocol: p.protocol.as_deref(),
                        number: p.number.unwrap_or(0),
                    })
            })
            .collect();
        PodFields {
            namespace: m.namespace.as_deref(),
            name: m.name.as_deref(),
            labels: m
                .labels
                .iter()
                .flat_map(|l| l.0.iter())
                .map(|(k, v)| (&**k, &**v))
                .collect(),
            node_name: spec.node_name.as_deref(),
            host_network: spec.host_network.unwrap_or(false),
            phase: status.phase.as_deref(),
            pod_ip: status.pod_ip.as_deref(),
            pod_ips: status
                .pod_ips
                .iter()
                .map(|ip| ip.ip.as_deref().unwrap_or_default())
                .collect(),
            ports,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    fn wire_text(text: &str) -> Result<model::Pod, ObjectError> {
        let mut p: WirePod = serde_json::from_str(text).expect("JSON syntax");
        p.take()
    }

    fn wire(v: &Value) -> Result<model::Pod, ObjectError> {
        wire_text(&serde_json::to_string(v).expect("json"))
    }

    /// The reference reader: the whole object into `k8s_openapi`'s `Pod`,
    /// then the converter.
    #[derive(Debug)]
    enum Whole {
        Pod(model::Pod),
        Unreadable,
        Invalid(ObjectError),
    }

    fn whole(v: &Value) -> Whole {
        match serde_json::from_value::<Pod>(v.clone()) {
            Err(_) => Whole::Unreadable,
            Ok(p) => match convert::pod(&p, None) {
                Ok(p) => Whole::Pod(p),
                Err(e) => Whole::Invalid(e),
            },
        }
    }

    /// Reads `v` both ways and requires the same outcome: the same pod,
    /// the same conversion error, or (a kept field of the wrong type)
    /// both unreadable.
    fn same(v: &Value) -> Result<model::Pod, ObjectError> {
        let (a, b) = (whole(v), wire(v));
        match (&a, &b) {
            (Whole::Pod(x), Ok(y)) => assert_eq!(x, y, "{v}"),
            (Whole::Invalid(x), Err(y)) => assert_eq!(x, y, "{v}"),
            (Whole::Unreadable, Err(y)) => {
                assert!(y.message.starts_with("cannot be read: "), "{y:?} for {v}")
            }
            _ => panic!("whole read {a:?}, wire read {b:?}, of {v}"),
        }
        b
    }

    /// A served pod with what the synthetic ones lack: a native sidecar
    /// with a named port, a plain init container with one (which does
    /// not count), two addresses, and unkept fields everywhere.
    fn rich() -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "n", "labels": {"app": "a", "tier": "web"},
                "resourceVersion": "7", "uid": "u-1", "annotations": {"x": "y"},
                "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}]},
            "spec": {"nodeName": "node-a", "hostNetwork": false,
                "containers": [
                    {"name": "c", "image": "i", "env": [{"name": "E", "value": "1"}],
                        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                            {"containerPort": 9090}]},
                    {"name": "d", "ports": [{"name": "dns", "containerPort": 53,
                        "protocol": "UDP", "hostPort": 53, "hostIP": "10.0.0.1"}]}],
                "initContainers": [
                    {"name": "s", "restartPolicy": "Always",
                        "ports": [{"name": "metrics", "containerPort": 9100}]},
                    {"name": "i", "ports": [{"name": "boot", "containerPort": 9}]}],
                "volumes": [{"name": "v", "emptyDir": {}}], "priority": 0},
            "status": {"phase": "Running", "podIP": "10.0.0.1",
                "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}],
                "conditions": [{"type": "Ready", "status": "True"}]}})
    }

    #[test]
    fn served_pods_reduce_as_whole_objects() {
        use nftpol_test_support::fakeapi::{as_served_pod, to_api};
        use nftpol_test_support::synth::{self, Shape};
        let model = synth::cluster(Shape {
            namespaces: 6,
            pods: 60,
            policies: 0,
            nodes: 3,
        });
        let mut named = 0;
        for p in model.pods() {
            let v = as_served_pod(to_api(&policy_compiler::Object::Pod(p.clone())));
            let read = same(&v).expect("valid");
            named += usize::from(!read.named_ports.is_empty());
        }
        assert!(named > 0, "served pods with named ports were compared");
    }

    #[test]
    fn rare_pod_fields_are_read() {
        let p = same(&rich()).expect("valid");
        assert_eq!(p.node_name.as_deref(), Some("node-a"));
        assert_eq!(
            p.ips,
            [
                "10.0.0.1".parse::<std::net::IpAddr>().unwrap(),
                "fd00::1".parse().unwrap()
            ]
        );
        let ports: Vec<(&str, u16)> = p
            .named_ports
            .iter()
            .map(|n| (n.name.as_str(), n.port))
            .collect();
        // The sidecar's port counts, the plain init container's does not.
        assert_eq!(ports, [("dns", 53), ("http", 8080), ("metrics", 9100)]);
        assert!(p.is_policy_pod());
        // An IPv6-only pod, its address only in podIPs.
        let mut v = rich();
        v["status"] = json!({"phase": "Running", "podIPs": [{"ip": "fd00::7"}]});
        assert_eq!(
            same(&v).expect("valid").ips,
            ["fd00::7".parse::<std::net::IpAddr>().unwrap()]
        );
        // hostNetwork, and a terminal phase.
        let mut v = rich();
        v["spec"]["hostNetwork"] = json!(true);
        assert!(same(&v).expect("valid").host_network);
        v["status"]["phase"] = json!("Succeeded");
        assert!(same(&v).expect("valid").terminal);
    }

    #[test]
    fn missing_null_and_unknown_fields_read_as_the_typed_object_reads_them() {
        let cases = [
            json!({"metadata": {"name": "p"}}),
            json!({"metadata": {"name": "p", "namespace": "", "labels": null},
                "spec": null, "status": null}),
            json!({"metadata": {"name": "p"}, "spec": {"containers": null,
                "initContainers": [{"restartPolicy": "Always", "ports": null}]},
                "status": {"podIPs": null, "podIP": ""}}),
            json!({"metadata": {"name": "p"}, "spec": {"containers": [
                {"ports": [{"name": "x"}]}]}}),
            json!({"metadata": {"name": "p"}, "spec": {"containers": [
                {"ports": [{"name": "", "containerPort": 0, "protocol": "TCP"}]}]}}),
            json!({"metadata": {"name": "p"}, "spec": {"containers": [
                {"ports": [{"name": "x", "containerPort": 80, "protocol": "ICMP"}]}]}}),
            json!({"metadata": {"name": "p"}, "spec": {"containers": [
                {"ports": [{"name": "x", "containerPort": 70000}]}]}}),
            json!({"metadata": {"name": "p"}, "status": {"podIPs": [{}]}}),
            json!({"metadata": {"name": "p"}, "status": {"podIP": "10.0.0.300"}}),
            json!({"metadata": {"namespace": "n"}}),
            json!({}),
            json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "p",
                "x-unknown": {"deep": [1, {"a": null}]}},
                "spec": {"x-unknown": [], "containers": [{"x": 1, "ports": [
                    {"name": "h", "containerPort": 1, "x": {}}]}]},
                "status": {"x-unknown": "?", "podIPs": [{"ip": "10.0.0.1", "x": 2}]},
                "x-unknown": true}),
        ];
        for v in &cases {
            let _ = same(v);
        }
        assert!(wire(&cases[4]).is_ok(), "an unnamed port is not checked");
        let e = wire(&cases[5]).expect_err("ICMP");
        assert_eq!(e.field, "spec.containers[0].ports[0].protocol");
        let e = wire(&cases[9]).expect_err("no name");
        assert_eq!(
            (e.object.as_str(), e.field.as_str()),
            ("n/<unnamed>", "metadata.name")
        );
    }

    /// What only JSON text can hold: escapes (no string to borrow from
    /// the page) and repeated keys (the last one wins, as in the typed
    /// object).
    #[test]
    fn escapes_and_repeated_keys() {
        let text = r#"{"metadata": {"name": "p\u0031", "namespace": "n", "name": "p2",
            "labels": {"a\"b": "caf\u00e9", "k": "1", "k": "2"}},
            "spec": {"hostNetwork": true, "hostNetwork": false},
            "status": {"podIP": "10.0.0.1", "podIP": "10.0.0.2"}}"#;
        let p = wire_text(text).expect("valid");
        let v: Value = serde_json::from_str(text).expect("json");
        let Whole::Pod(want) = whole(&v) else {
            panic!("whole read")
        };
        assert_eq!(p, want);
        assert_eq!(p.name, "p2");
        assert_eq!(p.labels.get("a\"b"), Some("café"));
        assert_eq!(p.labels.get("k"), Some("2"));
        assert!(!p.host_network);
        assert_eq!(p.ips, ["10.0.0.2".parse::<std::net::IpAddr>().unwrap()]);
    }

    #[test]
    fn a_kept_field_of_the_wrong_type_makes_its_pod_invalid_naming_the_field() {
        let cases: &[(&str, Value, &str)] = &[
            ("/spec/hostNetwork", json!("yes"), "spec.hostNetwork"),
            ("/metadata/labels/app", json!(7), "metadata.labels[\"app\"]"),
            (
                "/metadata/labels/app",
                json!(null),
                "metadata.labels[\"app\"]",
            ),
            ("/metadata/labels", json!(["a"]), "metadata.labels"),
            ("/metadata/name", json!({"a": 1}), "metadata.name"),
            ("/metadata", json!("x"), "metadata"),
            ("/spec/containers", json!("not a list"), "spec.containers"),
            ("/spec/containers/1", json!(null), "spec.containers[1]"),
            (
                "/spec/containers/0/ports/0/containerPort",
                json!("80"),
                "spec.containers[0].ports[0].containerPort",
            ),
            (
                "/spec/containers/0/ports/0/containerPort",
                json!(2_147_483_648u64),
                "spec.containers[0].ports[0].containerPort",
            ),
            (
                "/spec/containers/0/ports/0/containerPort",
                json!(80.5),
                "spec.containers[0].ports[0].containerPort",
            ),
            (
                "/spec/containers/0/ports/1/containerPort",
                json!(-1e300),
                "spec.containers[0].ports[1].containerPort",
            ),
            (
                "/spec/containers/1/ports/0/hostPort",
                json!(true),
                "spec.containers[1].ports[0].hostPort",
            ),
            // A plain init container's ports do not count, but are read.
            (
                "/spec/initContainers/1/ports/0/name",
                json!(1),
                "spec.initContainers[1].ports[0].name",
            ),
            (
                "/spec/initContainers/0/restartPolicy",
                json!(["Always"]),
                "spec.initContainers[0].restartPolicy",
            ),
            ("/status/podIPs", json!({"ip": "10.0.0.1"}), "status.podIPs"),
            ("/status/podIPs/1/ip", json!(5), "status.podIPs[1].ip"),
            ("/status/phase", json!(false), "status.phase"),
            ("/apiVersion", json!("v2"), "apiVersion"),
            ("/kind", json!("Service"), "kind"),
            ("/kind", json!(null), "kind"),
        ];
        for (at, value, field) in cases {
            let mut v = rich();
            *v.pointer_mut(at).unwrap_or_else(|| panic!("{at}")) = value.clone();
            let e = same(&v).expect_err("invalid");
            assert_eq!(e.field, *field, "{at} = {value}: {e}");
            let object = match *at {
                "/metadata" => "default/",
                "/metadata/name" => "n/",
                _ => "n/p",
            };
            assert_eq!(e.object, object, "{at}");
        }
        // The first of several wrong fields is the one named.
        let mut v = rich();
        v["spec"]["hostNetwork"] = json!(1);
        v["status"]["phase"] = json!(1);
        assert_eq!(wire(&v).expect_err("invalid").field, "spec.hostNetwork");
    }

    #[test]
    fn one_bad_pod_in_a_page_leaves_the_others_and_keeps_its_metadata() {
        use kube::core::ObjectList;
        let page = r#"{"apiVersion": "v1", "kind": "PodList",
            "metadata": {"resourceVersion": "99", "continue": "next"},
            "items": [
                {"metadata": {"name": "a", "namespace": "n", "resourceVersion": "1"},
                    "status": {"podIP": "10.0.0.1"}},
                {"metadata": {"name": "b", "namespace": "n", "resourceVersion": "2",
                    "uid": "u-b"}, "spec": {"hostNetwork": "yes", "containers": []},
                    "status": {"podIP": "10.0.0.2"}},
                "not a pod",
                {"metadata": {"name": "c", "namespace": "n", "labels": {"app": "x\u0041"}},
                    "status": {"podIPs": [{"ip": "fd00::3"}]}}]}"#;
        let list: ObjectList<WirePod> = serde_json::from_str(page).expect("page");
        assert_eq!(list.metadata.continue_.as_deref(), Some("next"));
        let mut items = list.items;
        assert_eq!(items.len(), 4);
        let names: Vec<Option<&str>> = items.iter().map(|p| p.meta().name.as_deref()).collect();
        assert_eq!(names, [Some("a"), Some("b"), None, Some("c")]);
        assert_eq!(items[1].meta().uid.as_deref(), Some("u-b"));
        assert_eq!(items[1].meta().resource_version.as_deref(), Some("2"));
        let results: Vec<_> = items.iter_mut().map(WirePod::take).collect();
        assert!(results[0].is_ok() && results[3].is_ok(), "{results:?}");
        let bad = results[1].as_ref().expect_err("bad");
        assert_eq!(
            (bad.object.as_str(), bad.field.as_str()),
            ("n/b", "spec.hostNetwork")
        );
        assert!(
            bad.message.contains("expected a boolean, found a string"),
            "{bad}"
        );
        let e = results[2].as_ref().expect_err("not a map");
        assert_eq!(e.field, "(object)");
        assert_eq!(
            results[3].as_ref().map(|p| p.labels.get("app")),
            Ok(Some("xA"))
        );
        // Taken twice is an error, never a panic.
        assert!(items[0].take().is_err());
        // Text that is not JSON still fails the page, as kube's own reader
        // fails it; the watcher retries.
        let cut = &page[..page.len() - 40];
        assert!(serde_json::from_str::<ObjectList<WirePod>>(cut).is_err());
    }

    /// A kept path of [`rich`] and values of every JSON type.
    fn mutation() -> impl Strategy<Value = (&'static str, Value)> {
        let paths = prop::sample::select(vec![
            "/apiVersion",
            "/kind",
            "/metadata",
            "/metadata/name",
            "/metadata/namespace",
            "/metadata/labels",
            "/metadata/labels/app",
            "/metadata/resourceVersion",
            "/metadata/uid",
            "/spec",
            "/spec/nodeName",
            "/spec/hostNetwork",
            "/spec/containers",
            "/spec/containers/0",
            "/spec/containers/0/ports",
            "/spec/containers/0/ports/0",
            "/spec/containers/0/ports/0/name",
            "/spec/containers/0/ports/0/protocol",
            "/spec/containers/0/ports/0/containerPort",
            "/spec/containers/1/ports/0/hostPort",
            "/spec/containers/1/ports/0/hostIP",
            "/spec/initContainers",
            "/spec/initContainers/0/restartPolicy",
            "/spec/initContainers/1/restartPolicy",
            "/spec/initContainers/1/ports/0/containerPort",
            "/status",
            "/status/phase",
            "/status/podIP",
            "/status/podIPs",
            "/status/podIPs/0",
            "/status/podIPs/1/ip",
        ]);
        let values = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            prop::sample::select(vec![0i64, 1, 53, 65535, 65536, -1, 2_147_483_648, i64::MIN])
                .prop_map(Value::from),
            Just(json!(u64::MAX)),
            Just(json!(1.5)),
            prop::sample::select(vec![
                "",
                "x",
                "TCP",
                "UDP",
                "SCTP",
                "tcp",
                "Always",
                "OnFailure",
                "Running",
                "Failed",
                "v1",
                "Pod",
                "10.0.0.9",
                "fd00::9",
                "::ffff:10.0.0.9",
                "300.0.0.1",
            ])
            .prop_map(Value::from),
            Just(json!([])),
            Just(json!({})),
            Just(json!([null])),
            Just(json!({"a": "b"})),
            Just(json!([{"ip": "10.0.0.9"}, {"ip": "10.0.0.9"}])),
            Just(json!([{"name": "q", "containerPort": 7, "protocol": "UDP"}])),
            Just(json!([{"ports": [{"name": "q", "containerPort": 7}],
                "restartPolicy": "Always"}])),
        ];
        (paths, values)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// Random values at the kept fields: the wire reader and the typed
        /// object agree on every one.
        #[test]
        fn agrees_with_the_typed_object(changes in prop::collection::vec(mutation(), 1..4)) {
            let mut v = rich();
            for (at, value) in changes {
                if let Some(slot) = v.pointer_mut(at) {
                    *slot = value;
                }
            }
            let _ = same(&v);
        }
    }
}
