//! Every key the config file accepts, read from the `Raw*` types themselves.
//!
//! [`all_keys`] deserializes a [`RawConfig`](crate::config::raw::RawConfig) from a recording
//! deserializer that answers every struct with all of its fields, every list with one element and
//! every map with one entry named `*`, and writes down each field's path. The reference
//! (`docs/configuration.md`) is tested against this list, so a key added to the code and not to
//! the reference (or the other way round) fails a test. It runs in tests and tools only.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;

use serde::Deserialize;
use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

use crate::config::raw::RawConfig;

/// Keys reached only through an untagged enum, which serde reads from a buffered value rather
/// than from the recording deserializer: `upstreams.<pool>.capacity.max_in_flight` is a number or
/// `{ adaptive: { min, max } }`.
const UNTAGGED_KEYS: &[&str] = &[
    "upstreams.*.capacity.max_in_flight.adaptive",
    "upstreams.*.capacity.max_in_flight.adaptive.min",
    "upstreams.*.capacity.max_in_flight.adaptive.max",
];

/// Every key path of the config file: `listeners[].name`, `tenants.*.tls.cert`, … (a map's
/// entry is `*`, a list's element `[]`).
pub fn all_keys() -> BTreeSet<String> {
    let keys = RefCell::new(BTreeSet::new());
    let de = Recorder {
        path: "",
        keys: &keys,
    };
    // The recorder answers every field, so this cannot fail on a type serde can describe; an
    // error would mean a type the recorder does not know, and the key list would be short,
    // which the reference test reports.
    if let Err(e) = RawConfig::deserialize(de) {
        keys.borrow_mut().insert(format!("<walk failed: {e}>"));
    }
    let mut keys = keys.into_inner();
    keys.extend(UNTAGGED_KEYS.iter().map(|k| (*k).to_owned()));
    keys
}

#[derive(Debug)]
struct WalkError(String);

impl fmt::Display for WalkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WalkError {}

impl de::Error for WalkError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

#[derive(Clone, Copy)]
struct Recorder<'a> {
    path: &'a str,
    keys: &'a RefCell<BTreeSet<String>>,
}

struct Owned<'a> {
    path: String,
    keys: &'a RefCell<BTreeSet<String>>,
}

impl<'a> Owned<'a> {
    fn de(&self) -> Recorder<'_> {
        Recorder {
            path: &self.path,
            keys: self.keys,
        }
    }
}

macro_rules! number {
    ($($m:ident => $v:ident($($val:expr)?)),* $(,)?) => {
        $(fn $m<V: Visitor<'de>>(self, v: V) -> Result<V::Value, WalkError> {
            v.$v($($val)?)
        })*
    };
}

impl<'de> Deserializer<'de> for Recorder<'_> {
    type Error = WalkError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, WalkError> {
        v.visit_u64(1)
    }

    number! {
        deserialize_bool => visit_bool(false),
        deserialize_i8 => visit_i64(1),
        deserialize_i16 => visit_i64(1),
        deserialize_i32 => visit_i64(1),
        deserialize_i64 => visit_i64(1),
        deserialize_u8 => visit_u64(1),
        deserialize_u16 => visit_u64(1),
        deserialize_u32 => visit_u64(1),
        deserialize_u64 => visit_u64(1),
        deserialize_f32 => visit_f64(1.0),
        deserialize_f64 => visit_f64(1.0),
        deserialize_char => visit_char('x'),
        deserialize_str => visit_str("x"),
        deserialize_string => visit_str("x"),
        deserialize_bytes => visit_bytes(b"x"),
        deserialize_byte_buf => visit_bytes(b"x"),
        deserialize_unit => visit_unit(),
        deserialize_identifier => visit_str("x"),
        deserialize_ignored_any => visit_unit(),
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, WalkError> {
        v.visit_some(self)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, WalkError> {
        v.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, WalkError> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, WalkError> {
        let element = Owned {
            path: format!("{}[]", self.path),
            keys: self.keys,
        };
        v.visit_seq(OneElement {
            element: Some(element),
        })
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, WalkError> {
        self.deserialize_seq(v)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        v: V,
    ) -> Result<V::Value, WalkError> {
        self.deserialize_seq(v)
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, WalkError> {
        v.visit_map(Fields {
            names: vec!["*"],
            next: 0,
            parent: self.path.to_owned(),
            keys: self.keys,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, WalkError> {
        v.visit_map(Fields {
            names: fields.to_vec(),
            next: 0,
            parent: self.path.to_owned(),
            keys: self.keys,
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, WalkError> {
        let first = variants.first().copied().unwrap_or("x");
        v.visit_enum(UnitVariant(first))
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

struct OneElement<'a> {
    element: Option<Owned<'a>>,
}

impl<'de> SeqAccess<'de> for OneElement<'_> {
    type Error = WalkError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, WalkError> {
        match self.element.take() {
            Some(e) => seed.deserialize(e.de()).map(Some),
            None => Ok(None),
        }
    }
}

/// A struct's fields, or a map's single `*` entry; each is recorded.
struct Fields<'a> {
    names: Vec<&'static str>,
    next: usize,
    parent: String,
    keys: &'a RefCell<BTreeSet<String>>,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = WalkError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, WalkError> {
        let Some(name) = self.names.get(self.next) else {
            return Ok(None);
        };
        let key: de::value::StrDeserializer<'_, WalkError> = name.into_deserializer();
        seed.deserialize(key).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, WalkError> {
        let name = self.names.get(self.next).copied().unwrap_or("*");
        self.next += 1;
        let path = join(&self.parent, name);
        self.keys.borrow_mut().insert(path.clone());
        seed.deserialize(Recorder {
            path: &path,
            keys: self.keys,
        })
    }
}

struct UnitVariant(&'static str);

impl<'de> EnumAccess<'de> for UnitVariant {
    type Error = WalkError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), WalkError> {
        let name: de::value::StrDeserializer<'_, WalkError> = self.0.into_deserializer();
        Ok((seed.deserialize(name)?, self))
    }
}

impl<'de> VariantAccess<'de> for UnitVariant {
    type Error = WalkError;

    fn unit_variant(self) -> Result<(), WalkError> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        _seed: T,
    ) -> Result<T::Value, WalkError> {
        Err(de::Error::custom("newtype variants are not walked"))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, _v: V) -> Result<V::Value, WalkError> {
        Err(de::Error::custom("tuple variants are not walked"))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        _v: V,
    ) -> Result<V::Value, WalkError> {
        Err(de::Error::custom("struct variants are not walked"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_nested_structs_lists_and_maps() {
        let keys = all_keys();
        for k in [
            "version",
            "listeners[].name",
            "tenants.*.routes[].require",
            "plans.*.quota.period",
            "cluster.rate_limit_store.redis.url",
            "upstreams.*.tls.client_cert.key",
        ] {
            assert!(keys.contains(k), "{k} missing from {keys:?}");
        }
        assert!(
            !keys.iter().any(|k| k.starts_with("<walk failed")),
            "{keys:?}"
        );
    }
}
