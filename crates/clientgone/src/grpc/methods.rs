//! [`GrpcMethods`]: the methods a server is known to implement, so the
//! `rpc_method` label stays bounded whatever names clients invent.

use std::collections::HashMap;
use std::sync::Arc;

/// The `rpc_method` label of a call to a method the server does not list.
pub const OTHER_METHOD: &str = "_OTHER";

/// How a method streams, as its descriptor says (`rpc_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RpcType {
    /// One request message, one response message.
    Unary,
    /// A stream of request messages, one response message.
    ClientStreaming,
    /// One request message, a stream of response messages.
    ServerStreaming,
    /// Streams both ways.
    BidiStreaming,
    /// No descriptor says (a method the server does not list).
    Unknown,
}

impl RpcType {
    /// All types, in label order.
    pub const ALL: [RpcType; 5] = [
        RpcType::Unary,
        RpcType::ClientStreaming,
        RpcType::ServerStreaming,
        RpcType::BidiStreaming,
        RpcType::Unknown,
    ];

    /// The type of a method that streams its requests (`client`) and/or its
    /// responses (`server`), as a method descriptor's two flags say.
    pub const fn from_streaming(client: bool, server: bool) -> RpcType {
        match (client, server) {
            (false, false) => RpcType::Unary,
            (true, false) => RpcType::ClientStreaming,
            (false, true) => RpcType::ServerStreaming,
            (true, true) => RpcType::BidiStreaming,
        }
    }

    /// The Prometheus / OTel label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            RpcType::Unary => "unary",
            RpcType::ClientStreaming => "client_streaming",
            RpcType::ServerStreaming => "server_streaming",
            RpcType::BidiStreaming => "bidi_streaming",
            RpcType::Unknown => "unknown",
        }
    }
}

/// The gRPC methods a server implements, each with its [`RpcType`]: calls to
/// them are counted under their fully-qualified name (`pkg.Service/Method`),
/// any other call under `_OTHER`.
///
/// A list given in code:
///
/// ```
/// use clientgone::{GrpcMethods, RpcType};
///
/// let methods = GrpcMethods::new()
///     .with("helloworld.Greeter/SayHello", RpcType::Unary)
///     .with("helloworld.Greeter/SayManyHellos", RpcType::ServerStreaming);
/// assert_eq!(methods.len(), 2);
/// ```
///
/// or, with the `grpc` feature, every method of a protobuf `FileDescriptorSet`
/// (see `GrpcMethods::from_file_descriptor_set`; a plain name, not a link,
/// so that these docs build without the feature too).
#[derive(Clone, Debug, Default)]
pub struct GrpcMethods {
    /// By request path (`/pkg.Service/Method`), the index into `methods`.
    by_path: HashMap<Box<str>, usize>,
    methods: Vec<(Arc<str>, RpcType)>,
}

impl GrpcMethods {
    /// An empty list: every call is `_OTHER`, of type `unknown`.
    pub fn new() -> Self {
        GrpcMethods::default()
    }

    /// Adds the method `name`, written `pkg.Service/Method` (a leading `/`,
    /// as in the request path, is dropped). Adding a name again replaces its type.
    pub fn with(mut self, name: &str, rpc_type: RpcType) -> Self {
        let name = name.strip_prefix('/').unwrap_or(name);
        let path: Box<str> = format!("/{name}").into();
        match self.by_path.get(&path) {
            Some(&i) => self.methods[i].1 = rpc_type,
            None => {
                self.by_path.insert(path, self.methods.len());
                self.methods.push((name.into(), rpc_type));
            }
        }
        self
    }

    /// Every method of every service in a protobuf `FileDescriptorSet`: the
    /// bytes `protoc --descriptor_set_out`, `buf build -o`, `tonic-prost-build`'s
    /// `file_descriptor_set_path` or `protox` write.
    ///
    /// ```
    /// use clientgone::{GrpcMethods, RpcType};
    /// use prost::Message;
    /// use prost_types::{FileDescriptorProto, FileDescriptorSet, MethodDescriptorProto, ServiceDescriptorProto};
    ///
    /// let set = FileDescriptorSet {
    ///     file: vec![FileDescriptorProto {
    ///         package: Some("helloworld".into()),
    ///         service: vec![ServiceDescriptorProto {
    ///             name: Some("Greeter".into()),
    ///             method: vec![MethodDescriptorProto {
    ///                 name: Some("SayHello".into()),
    ///                 ..Default::default()
    ///             }],
    ///             ..Default::default()
    ///         }],
    ///         ..Default::default()
    ///     }],
    /// };
    /// let methods = GrpcMethods::from_file_descriptor_set(&set.encode_to_vec())?;
    /// assert_eq!(methods.iter().collect::<Vec<_>>(), [("helloworld.Greeter/SayHello", RpcType::Unary)]);
    /// # Ok::<(), clientgone::GrpcMethodsError>(())
    /// ```
    #[cfg(feature = "grpc")]
    #[cfg_attr(docsrs, doc(cfg(feature = "grpc")))]
    pub fn from_file_descriptor_set(bytes: &[u8]) -> Result<Self, GrpcMethodsError> {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(bytes).map_err(|e| {
            GrpcMethodsError(format!(
                "not a protobuf FileDescriptorSet ({e}); a .proto source is compiled into one \
                     with `protoc --include_imports --descriptor_set_out=FILE`, \
                     `python3 -m grpc_tools.protoc` (same flags) or `buf build -o FILE`"
            ))
        })?;
        let mut methods = GrpcMethods::new();
        for file in &set.file {
            let package = file.package();
            for service in &file.service {
                for method in &service.method {
                    let name = if package.is_empty() {
                        format!("{}/{}", service.name(), method.name())
                    } else {
                        format!("{package}.{}/{}", service.name(), method.name())
                    };
                    let rpc_type = RpcType::from_streaming(
                        method.client_streaming(),
                        method.server_streaming(),
                    );
                    methods = methods.with(&name, rpc_type);
                }
            }
        }
        if methods.is_empty() {
            return Err(GrpcMethodsError(
                "the FileDescriptorSet defines no service methods (was it written from the \
                 .proto files that declare the services?)"
                    .into(),
            ));
        }
        Ok(methods)
    }

    /// How many methods are listed.
    pub fn len(&self) -> usize {
        self.methods.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.methods.is_empty()
    }

    /// The methods, as `(pkg.Service/Method, type)`, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = (&str, RpcType)> {
        self.methods.iter().map(|(name, t)| (&**name, *t))
    }

    /// The method a request path (`/pkg.Service/Method`) calls, and how it
    /// streams; `None` for a method not in the list (count it as
    /// [`OTHER_METHOD`]).
    ///
    /// ```
    /// use clientgone::{GrpcMethods, RpcType};
    /// let methods = GrpcMethods::new().with("helloworld.Greeter/SayHello", RpcType::Unary);
    /// let (name, rpc_type) = methods.method_of("/helloworld.Greeter/SayHello").unwrap();
    /// assert_eq!((&**name, rpc_type), ("helloworld.Greeter/SayHello", RpcType::Unary));
    /// assert!(methods.method_of("/helloworld.Greeter/Invented").is_none());
    /// ```
    pub fn method_of(&self, path: &str) -> Option<(&Arc<str>, RpcType)> {
        self.lookup(path).map(|index| self.get(index))
    }

    /// The index of the method a request path (`/pkg.Service/Method`) calls.
    pub(crate) fn lookup(&self, path: &str) -> Option<usize> {
        self.by_path.get(path).copied()
    }

    /// The method at `index`, from [`lookup`](Self::lookup).
    pub(crate) fn get(&self, index: usize) -> (&Arc<str>, RpcType) {
        let (name, t) = &self.methods[index];
        (name, *t)
    }
}

/// A descriptor set that could not be read: see
/// `GrpcMethods::from_file_descriptor_set` (feature `grpc`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcMethodsError(String);

impl std::fmt::Display for GrpcMethodsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GrpcMethodsError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_by_request_path() {
        let methods = GrpcMethods::new()
            .with("a.B/C", RpcType::Unary)
            .with("/a.B/D", RpcType::BidiStreaming)
            .with("a.B/C", RpcType::ServerStreaming);
        assert_eq!(methods.len(), 2);
        let c = methods.lookup("/a.B/C").unwrap();
        assert_eq!(methods.get(c).1, RpcType::ServerStreaming);
        assert_eq!(&**methods.get(methods.lookup("/a.B/D").unwrap()).0, "a.B/D");
        assert_eq!(methods.lookup("a.B/C"), None);
        assert_eq!(methods.lookup("/a.B/E"), None);
    }

    #[test]
    fn streaming_flags() {
        assert_eq!(RpcType::from_streaming(false, false), RpcType::Unary);
        assert_eq!(
            RpcType::from_streaming(true, false),
            RpcType::ClientStreaming
        );
        assert_eq!(
            RpcType::from_streaming(false, true),
            RpcType::ServerStreaming
        );
        assert_eq!(RpcType::from_streaming(true, true), RpcType::BidiStreaming);
    }

    #[cfg(feature = "grpc")]
    #[test]
    fn bad_descriptor_sets_are_clear_errors() {
        let err = GrpcMethods::from_file_descriptor_set(b"\xff\xff\xff").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("not a protobuf FileDescriptorSet"),
            "{err}"
        );
        let err = GrpcMethods::from_file_descriptor_set(b"").unwrap_err();
        assert!(err.to_string().contains("no service methods"), "{err}");
    }
}
