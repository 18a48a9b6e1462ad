//! Where a conversation happens. Rules and offers may be limited to some channels.
use serde::{Deserialize, Serialize};

/// A customer-service channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// A web chat.
    Web,
    /// A mobile app.
    App,
    /// A mini-program (WeChat, Alipay…).
    MiniProgram,
    /// A phone call's transcript.
    Phone,
    /// A social-media inbox.
    Social,
}

impl Channel {
    /// Every channel.
    pub const ALL: [Channel; 5] = [
        Channel::Web,
        Channel::App,
        Channel::MiniProgram,
        Channel::Phone,
        Channel::Social,
    ];

    /// The channel's name as files and requests write it.
    pub fn name(self) -> &'static str {
        match self {
            Channel::Web => "web",
            Channel::App => "app",
            Channel::MiniProgram => "mini_program",
            Channel::Phone => "phone",
            Channel::Social => "social",
        }
    }

    /// The channel called `name`.
    pub fn from_name(name: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.name() == name)
    }
}
