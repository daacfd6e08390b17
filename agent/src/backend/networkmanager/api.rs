//! NetworkManager's D-Bus API, as far as host mode uses it, over
//! [`Bus`]: one method per call, typed, and the activation of a profile
//! waited for until NetworkManager says it is active or why it is not.
//!
//! The object names and numbers are NetworkManager's documented D-Bus API
//! (`org.freedesktop.NetworkManager*`, stable since 1.0; checkpoints since
//! 1.12, `LoadConnections` since 1.0). Nothing here decides what to call:
//! that is [`super::host`]'s.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tracing::debug;
use zbus::message::Type as MessageType;
use zbus::{MatchRule, MessageStream, ObjectPath, OwnedObjectPath, OwnedVariant, Variant};

use super::bus::{Bus, BusError, SERVICE};
use crate::hostns::HostNamespaces;

pub const ROOT: &str = "/org/freedesktop/NetworkManager";
pub const SETTINGS: &str = "/org/freedesktop/NetworkManager/Settings";
pub const MANAGER: &str = "org.freedesktop.NetworkManager";
pub const DEVICE: &str = "org.freedesktop.NetworkManager.Device";
pub const ACTIVE: &str = "org.freedesktop.NetworkManager.Connection.Active";
pub const SETTINGS_IFACE: &str = "org.freedesktop.NetworkManager.Settings";
pub const CONNECTION: &str = "org.freedesktop.NetworkManager.Settings.Connection";
pub const CHECKPOINT: &str = "org.freedesktop.NetworkManager.Checkpoint";
const OBJECT_MANAGER: &str = "org.freedesktop.DBus.ObjectManager";

/// `NMActiveConnectionState`: activated, deactivated.
const ACTIVATED: u32 = 2;
const DEACTIVATED: u32 = 4;
/// `NMDeviceState`: disconnected, failed.
pub const DEVICE_DISCONNECTED: u32 = 30;
const DEVICE_FAILED: u32 = 120;

/// A property value, as far as host mode reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prop {
    Str(String),
    Bool(bool),
    Uint(u64),
    Path(String),
    Paths(Vec<String>),
}

impl Prop {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) | Self::Path(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        if let Self::Bool(b) = self { Some(*b) } else { None }
    }

    pub fn as_u64(&self) -> Option<u64> {
        if let Self::Uint(u) = self { Some(*u) } else { None }
    }

    pub fn paths(&self) -> &[String] {
        if let Self::Paths(p) = self { p } else { &[] }
    }

    /// The value of a D-Bus variant; `None` for kinds host mode never reads.
    fn of(value: &Variant<'_>) -> Option<Self> {
        Some(match value {
            Variant::Str(s) => Self::Str(s.to_string()),
            Variant::Bool(b) => Self::Bool(*b),
            Variant::U32(u) => Self::Uint(u64::from(*u)),
            Variant::U64(u) => Self::Uint(*u),
            Variant::ObjectPath(p) => Self::Path(p.to_string()),
            Variant::Array(a) => Self::Paths(
                a.inner()
                    .iter()
                    .filter_map(|v| if let Variant::ObjectPath(p) = v { Some(p.to_string()) } else { None })
                    .collect(),
            ),
            Variant::Variant(inner) => return Self::of(inner),
            _ => return None,
        })
    }
}

/// NetworkManager's object tree: object → interface → property → value.
#[derive(Debug, Default, Clone)]
pub struct Tree(pub BTreeMap<String, BTreeMap<String, BTreeMap<String, Prop>>>);

impl Tree {
    pub fn prop(&self, object: &str, interface: &str, name: &str) -> Option<&Prop> {
        self.0.get(object)?.get(interface)?.get(name)
    }

    pub fn objects(&self) -> impl Iterator<Item = &String> {
        self.0.keys()
    }
}

type ManagedObjects = HashMap<OwnedObjectPath, HashMap<String, HashMap<String, OwnedVariant>>>;

/// How an activation ended when it did not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotActivated {
    /// Why the device failed (`NMDeviceStateReason`), when it did.
    pub device_reason: Option<u32>,
    /// Why the activation ended (`NMActiveConnectionStateReason`).
    pub reason: u32,
}

impl std::fmt::Display for NotActivated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.device_reason {
            Some(device) => match device_reason(device) {
                Some(text) => write!(f, "{text} (device state reason {device})"),
                None => write!(f, "the device failed (device state reason {device})"),
            },
            None => write!(f, "{} (activation state reason {})", active_reason(self.reason), self.reason),
        }
    }
}

/// NetworkManager on the host's system bus.
#[derive(Debug, Clone)]
pub struct NetworkManager {
    bus: Bus,
}

impl NetworkManager {
    pub fn of(host: &HostNamespaces) -> Self {
        Self { bus: Bus::of(host) }
    }

    /// Every object NetworkManager has, with its properties.
    pub fn tree(&self) -> Result<Tree, BusError> {
        let objects: ManagedObjects = self.bus.call("/org/freedesktop", OBJECT_MANAGER, "GetManagedObjects", ())?;
        let mut tree = Tree::default();
        for (object, interfaces) in objects {
            let interfaces = interfaces
                .into_iter()
                .map(|(interface, props)| {
                    let props = props.iter().filter_map(|(k, v)| Some((k.clone(), Prop::of(v)?))).collect();
                    (interface, props)
                })
                .collect();
            tree.0.insert(object.to_string(), interfaces);
        }
        Ok(tree)
    }

    /// The device object of the NIC called `name`; `None` when
    /// NetworkManager has none.
    pub fn device(&self, name: &str) -> Result<Option<String>, BusError> {
        match self.bus.call::<_, OwnedObjectPath>(ROOT, MANAGER, "GetDeviceByIpIface", (name.to_owned(),)) {
            Ok(device) => Ok(Some(device.to_string())),
            Err(e) if e.name() == Some("org.freedesktop.NetworkManager.UnknownDevice") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A checkpoint of `device` alone, rolled back by NetworkManager itself
    /// after `timeout` seconds: its object.
    pub fn checkpoint_create(&self, device: &str, timeout: u32) -> Result<String, BusError> {
        let devices = vec![path(device)?];
        let checkpoint: OwnedObjectPath = self.bus.call(ROOT, MANAGER, "CheckpointCreate", (devices, timeout, 0u32))?;
        Ok(checkpoint.to_string())
    }

    /// Rolls back to `checkpoint`: each device's result (0 is success).
    pub fn checkpoint_rollback(&self, checkpoint: &str) -> Result<BTreeMap<String, u32>, BusError> {
        let results: HashMap<String, u32> = self.bus.call(ROOT, MANAGER, "CheckpointRollback", (path(checkpoint)?,))?;
        Ok(results.into_iter().collect())
    }

    /// The checkpoints NetworkManager holds.
    pub fn checkpoints(&self) -> Result<Vec<String>, BusError> {
        let all: Vec<OwnedObjectPath> = self.bus.property(ROOT, MANAGER, "Checkpoints")?;
        Ok(all.into_iter().map(|p| p.to_string()).collect())
    }

    /// The devices of `checkpoint` and its rollback timeout (seconds).
    pub fn checkpoint(&self, checkpoint: &str) -> Result<(Vec<String>, u32), BusError> {
        let devices: Vec<OwnedObjectPath> = self.bus.property(checkpoint, CHECKPOINT, "Devices")?;
        let timeout: u32 = self.bus.property(checkpoint, CHECKPOINT, "RollbackTimeout")?;
        Ok((devices.into_iter().map(|p| p.to_string()).collect(), timeout))
    }

    /// `LoadConnections`: NetworkManager (re)reads these keyfiles (absolute
    /// paths in the host), and forgets the profile of a file that is gone.
    /// The files it refused (or that gave it no profile).
    pub fn load(&self, files: Vec<String>) -> Result<Vec<String>, BusError> {
        let (_, failures): (bool, Vec<String>) =
            self.bus.call(SETTINGS, SETTINGS_IFACE, "LoadConnections", (files,))?;
        Ok(failures)
    }

    /// `Device.Reapply` of the profile applied on `device`, as it is now.
    pub fn reapply(&self, device: &str) -> Result<(), BusError> {
        let settings: HashMap<String, HashMap<String, OwnedVariant>> = HashMap::new();
        self.bus.call(device, DEVICE, "Reapply", (settings, 0u64, 0u32))
    }

    /// `Device.Disconnect`: NetworkManager deactivates `device` and activates
    /// nothing on it by itself.
    pub fn disconnect(&self, device: &str) -> Result<(), BusError> {
        self.bus.call(device, DEVICE, "Disconnect", ())
    }

    /// The state of `device` (`NMDeviceState`: 30 is disconnected).
    pub fn device_state(&self, device: &str) -> Result<u32, BusError> {
        self.bus.property(device, DEVICE, "State")
    }

    /// Drops `checkpoint` (keeping what it covered as it is now) and deletes
    /// the profiles `delete`, side by side: each call's result, in order.
    pub fn settle(&self, checkpoint: Option<&str>, delete: &[String]) -> Vec<Result<(), BusError>> {
        // (object called, interface, method, the checkpoint to destroy)
        type Call = (String, &'static str, &'static str, Option<String>);
        let mut calls: Vec<Call> = checkpoint
            .map(|c| (ROOT.to_owned(), MANAGER, "CheckpointDestroy", Some(c.to_owned())))
            .into_iter()
            .collect();
        calls.extend(delete.iter().map(|profile| (profile.clone(), CONNECTION, "Delete", None)));
        let names: Vec<String> = calls
            .iter()
            .map(|(object, interface, method, arg)| match arg {
                Some(arg) => format!("{interface}.{method}({arg})"),
                None => format!("{interface}.{method} on {object}"),
            })
            .collect();
        let count = calls.len();
        let done = self.bus.run(names.join(", "), super::bus::CALL_TIMEOUT, move |conn| async move {
            let each = calls.into_iter().map(|(object, interface, method, checkpoint)| {
                let conn = conn.clone();
                async move {
                    let object = object.as_str();
                    match checkpoint {
                        Some(checkpoint) => {
                            let body = (ObjectPath::try_from(checkpoint.as_str())?,);
                            conn.call_method(Some(SERVICE), object, Some(interface), method, &body).await?
                        }
                        None => conn.call_method(Some(SERVICE), object, Some(interface), method, &()).await?,
                    };
                    Ok::<(), zbus::Error>(())
                }
            });
            Ok(futures::future::join_all(each).await)
        });
        match done {
            Ok(results) => results
                .into_iter()
                .zip(names)
                .map(|(r, call)| r.map_err(|source| BusError::Call { call, source }))
                .collect(),
            Err(e) => (0..count).map(|_| Err(e.clone())).collect(),
        }
    }

    /// Activates the profile `uuid` on `device` and waits, at most `wait`,
    /// until NetworkManager says it is active (`Ok(Ok(()))`) or why it is
    /// not (`Ok(Err(…))`).
    pub fn activate(&self, uuid: &str, device: &str, wait: Duration) -> Result<Result<(), NotActivated>, BusError> {
        let (uuid, device) = (uuid.to_owned(), device.to_owned());
        let call = format!("{MANAGER}.ActivateConnection of {uuid} on {device}");
        self.bus.run(call, wait, move |conn| async move {
            let profile: OwnedObjectPath = conn
                .call_method(Some(SERVICE), SETTINGS, Some(SETTINGS_IFACE), "GetConnectionByUuid", &(uuid.as_str(),))
                .await?
                .body()
                .deserialize()?;
            // Listening before the activation starts: no state change is missed.
            let signals = |interface: &'static str, path: Option<&str>| {
                let rule =
                    MatchRule::builder().msg_type(MessageType::Signal).interface(interface).member("StateChanged");
                match path {
                    Some(path) => rule.path(path.to_owned()),
                    None => rule.path_namespace("/org/freedesktop/NetworkManager/ActiveConnection"),
                }
                .build()
            };
            let mut states = MessageStream::for_match_rule(signals(ACTIVE, None)?, &conn, None).await?;
            let mut device_states = MessageStream::for_match_rule(signals(DEVICE, Some(&device))?, &conn, None).await?;
            let active: OwnedObjectPath = conn
                .call_method(
                    Some(SERVICE),
                    ROOT,
                    Some(MANAGER),
                    "ActivateConnection",
                    &(profile, ObjectPath::try_from(device.as_str())?, ObjectPath::try_from("/")?),
                )
                .await?
                .body()
                .deserialize()?;
            debug!(active = %active, "NetworkManager activates the profile");
            let mut device_reason = None;
            // The device's FAILED comes before the activation's DEACTIVATED
            // on the bus: the device's signals are taken first (`biased`),
            // and those already queued are read before an end is reported,
            // so the reason is the device's when it has one.
            let failed = |signal: zbus::Result<zbus::Message>| -> Result<Option<u32>, zbus::Error> {
                let (state, _, reason): (u32, u32, u32) = signal?.body().deserialize()?;
                Ok((state == DEVICE_FAILED).then_some(reason))
            };
            loop {
                use futures::{FutureExt, StreamExt};
                tokio::select! {
                    biased;
                    Some(signal) = device_states.next() => {
                        device_reason = failed(signal)?.or(device_reason);
                    }
                    Some(signal) = states.next() => {
                        let signal = signal?;
                        if signal.header().path().is_some_and(|p| p.as_str() == active.as_str()) {
                            let (state, reason): (u32, u32) = signal.body().deserialize()?;
                            match state {
                                ACTIVATED => return Ok(Ok(())),
                                DEACTIVATED => {
                                    while let Some(Some(signal)) = device_states.next().now_or_never() {
                                        device_reason = failed(signal)?.or(device_reason);
                                    }
                                    return Ok(Err(NotActivated { device_reason, reason }));
                                }
                                _ => {}
                            }
                        }
                    }
                    else => return Err(zbus::Error::InputOutput(std::sync::Arc::new(std::io::Error::other(
                        "the bus closed while NetworkManager activated the profile",
                    )))),
                }
            }
        })
    }
}

fn path(object: &str) -> Result<ObjectPath<'static>, BusError> {
    ObjectPath::try_from(object.to_owned())
        .map_err(|source| BusError::Call { call: format!("object path {object:?}"), source })
}

/// What `NMDeviceStateReason` `reason` means (the reasons an Ethernet
/// activation can fail for; NetworkManager's documented wording).
pub fn device_reason(reason: u32) -> Option<&'static str> {
    Some(match reason {
        0 => "no reason given",
        1 => "unknown error",
        4 => "configuration failed",
        5 => "IP configuration could not be reserved (no available address, timeout, etc.)",
        6 => "the IP configuration is no longer valid",
        36 => "the device was removed",
        38 => "the connection was removed",
        39 => "disconnected by user or client",
        40 => "carrier/link changed",
        50 => "a dependency of the connection failed",
        60 => "a new activation was enqueued",
        64 => "a duplicate IP address was detected",
        65 => "the selected IP method is not supported",
        _ => return None,
    })
}

/// What `NMActiveConnectionStateReason` `reason` means.
pub fn active_reason(reason: u32) -> &'static str {
    match reason {
        1 => "deactivated for no reason given",
        2 => "disconnected by user or client",
        3 => "the device was disconnected",
        5 => "the IP configuration was invalid",
        6 => "the activation timed out",
        11 => "the connection was removed",
        12 => "a dependency of the connection failed",
        14 => "the device was removed",
        _ => "activation failed",
    }
}
