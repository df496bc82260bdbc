//! The registration record: one definition of an instance as users write it, shared by the
//! CLI (`shoal register` / `deregister` flags), the agent API (`/v1/agent/instances` bodies and
//! queries) and the agent config (`[[instance]]`).
//!
//! The model's [`Instance`] is the same record in its checked, compact form (what gossip
//! carries); [`Registration::to_instance`] is the one conversion. The JSON of the API uses
//! camelCase (`virtualNode`, `instanceId`); the TOML of the config file uses the same keys or
//! their snake_case spelling (`virtual_node`, and `id` as the config files have always said).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use shoal_model::discovery::{instance_key, Instance, InvalidInstance};

/// Which instance: the part of a registration that names it (all a deregistration needs).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InstanceName {
    /// Cloud Map namespace (e.g. apps.local).
    #[arg(long, default_value = "")]
    #[serde(default)]
    pub namespace: String,
    /// Cloud Map service.
    #[arg(long, default_value = "")]
    #[serde(default)]
    pub service: String,
    /// Mesh of the virtual node (instead of or besides a namespace and service).
    #[arg(long, default_value = "")]
    #[serde(default)]
    pub mesh: String,
    /// Virtual node the instance belongs to.
    #[arg(long, default_value = "")]
    #[serde(default, alias = "virtual_node")]
    pub virtual_node: String,
    /// Instance id, unique within the service.
    #[arg(long)]
    #[serde(alias = "id")]
    pub instance_id: String,
}

impl InstanceName {
    /// The key of the instance this names (as [`Instance::key`] computes it).
    pub fn key(&self) -> String {
        instance_key(
            &self.namespace,
            &self.service,
            &self.mesh,
            &self.virtual_node,
            &self.instance_id,
        )
    }
}

/// A registration: which instance, where it listens, and its custom attributes.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Registration {
    /// Which instance.
    #[command(flatten)]
    #[serde(flatten)]
    pub name: InstanceName,
    /// Address the instance listens on.
    #[arg(long)]
    pub address: IpAddr,
    /// Port the instance listens on.
    #[arg(long)]
    pub port: u16,
    /// Custom attribute `KEY=VALUE` (repeatable).
    #[arg(long = "attr", value_parser = parse_attribute)]
    #[serde(default, with = "attribute_map")]
    pub attributes: Vec<(String, String)>,
}

impl Registration {
    /// The instance, checked and normalized (`Instance::normalize`).
    pub fn to_instance(&self) -> Result<Instance, InvalidInstance> {
        Instance {
            namespace: self.name.namespace.clone(),
            service: self.name.service.clone(),
            mesh: self.name.mesh.clone(),
            virtual_node: self.name.virtual_node.clone(),
            id: self.name.instance_id.clone(),
            address: self.address,
            port: self.port,
            attributes: self.attributes.iter().cloned().collect(),
        }
        .normalize()
    }
}

/// `KEY=VALUE` of `--attr`.
fn parse_attribute(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("--attr takes KEY=VALUE, got {s:?}"))
}

/// The attributes as a JSON/TOML map (`{"KEY": "VALUE"}`), as the API and the config take them.
mod attribute_map {
    use super::*;

    pub fn serialize<S: serde::Serializer>(
        attrs: &[(String, String)],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let map: BTreeMap<&str, &str> = attrs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        map.serialize(s)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(String, String)>, D::Error> {
        Ok(BTreeMap::<String, String>::deserialize(d)?
            .into_iter()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web() -> Registration {
        Registration {
            name: InstanceName {
                namespace: "Apps.Local".into(),
                service: "web".into(),
                instance_id: "w1".into(),
                ..Default::default()
            },
            address: "10.0.0.5".parse().unwrap(),
            port: 8080,
            attributes: vec![("zone".into(), "a".into())],
        }
    }

    #[test]
    fn the_api_json_round_trips_and_names_the_same_key() {
        let r = web();
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"namespace": "Apps.Local", "service": "web", "mesh": "",
                "virtualNode": "", "instanceId": "w1", "address": "10.0.0.5", "port": 8080,
                "attributes": {"zone": "a"}})
        );
        assert_eq!(serde_json::from_value::<Registration>(json).unwrap(), r);
        assert_eq!(r.name.key(), r.to_instance().unwrap().key());
        assert_eq!(r.name.key(), "apps.local/web/w1");
    }

    #[test]
    fn the_config_file_spelling_is_accepted() {
        let r: Registration = toml::from_str(
            "namespace = \"apps.local\"\nservice = \"web\"\nid = \"w1\"\naddress = \"10.0.0.5\"\nport = 8080\nattributes = { zone = \"a\" }\n",
        )
        .unwrap();
        assert_eq!(r.name.instance_id, "w1");
        assert_eq!(r.attributes, vec![("zone".to_string(), "a".to_string())]);
        let r: Registration = toml::from_str(
            "mesh = \"m\"\nvirtual_node = \"vn\"\nid = \"w1\"\naddress = \"10.0.0.5\"\nport = 1\n",
        )
        .unwrap();
        assert_eq!(r.name.key(), "@m/vn/w1");
    }

    #[test]
    fn unknown_keys_are_refused_in_both_halves() {
        let e = toml::from_str::<Registration>(
            "namespace = \"a\"\nservice = \"b\"\nid = \"c\"\naddress = \"10.0.0.5\"\nport = 1\nprot = 2\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("prot"), "{e}");
        let e = serde_json::from_value::<InstanceName>(
            serde_json::json!({"instanceId": "x", "namespac": "a"}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("namespac"), "{e}");
    }

    #[test]
    fn bad_attributes_are_refused_by_the_flag_parser() {
        assert!(parse_attribute("novalue").is_err());
        assert_eq!(
            parse_attribute("k=v=w").unwrap(),
            ("k".to_string(), "v=w".to_string())
        );
    }
}
