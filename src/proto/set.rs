//! The `set!` macro: an enum of the messages that may arrive at one point
//! of a conversation, with its `kind()`, encoding, decoding, and `From`
//! each member. Expansions name the members by their struct names, in
//! scope where the macro is invoked.

/// Declares a set: the enum, its `kind()`, its encoding, its decoding,
/// and `From` each member.
macro_rules! set {
    ($(#[$meta:meta])* $set:ident: $expected:literal, known $known:path, tags $tags:ident, { $($name:ident),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum $set {
            $( #[doc = concat!("A [`", stringify!($name), "`].")] $name($name), )*
        }

        impl $set {
            /// The `"type"` tag of this message.
            pub fn kind(&self) -> &'static str {
                match self {
                    $( $set::$name(_) => <$name as $crate::proto::message::Message>::KIND, )*
                }
            }
        }

        impl serde::Serialize for $set {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self {
                    $( $set::$name(m) => m.serialize(s), )*
                }
            }
        }

        impl $crate::wire::FrameHeader for $set {
            fn body_len(&self) -> u64 {
                match self {
                    $( $set::$name(m) => $crate::wire::FrameHeader::body_len(m), )*
                }
            }

            fn from_json(text: &str) -> Result<Self, $crate::wire::Error> {
                // The data-path frames: built from the fields the one
                // parse read, in a small function of their own.
                if let Some((kind, hot)) = $crate::proto::decode::peek_hot::<$tags>(text) {
                    $(
                        if kind == $tags::$name {
                            if let Some(m) = $crate::proto::decode::from_hot::<$name>(&hot) {
                                return Ok($set::$name(m));
                            }
                        }
                    )*
                }
                $set::decode_rest(text)
            }
        }

        impl $set {
            /// Every other type: parsed again into its own struct. Kept
            /// out of line so the fast path stays small.
            #[inline(never)]
            fn decode_rest(text: &str) -> Result<Self, $crate::wire::Error> {
                let peek = $crate::proto::decode::peek::<$tags>(text)?;
                $(
                    if peek.kind == $tags::$name {
                        return $crate::proto::decode::member::<$name, _>(text, &peek).map($set::$name);
                    }
                )*
                Err($crate::proto::decode::stranger(text, &peek, $expected, $known))
            }
        }

        $(
            impl From<$name> for $set {
                fn from(m: $name) -> Self {
                    $set::$name(m)
                }
            }
        )*
    };
}
pub(crate) use set;
