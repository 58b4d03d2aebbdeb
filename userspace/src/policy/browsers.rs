//! How browsers are judged per port: `[browsers]` compiled into the verdict
//! a browser-class rule gets at each port (`LW_BROWSER_PORTS`, two bits per
//! port, the mode already applied).

use loopwarden_common::{BROWSER_PORT_WORDS, browser_slot, browser_verdict, verdict};

use super::{Action, Mode};
use crate::config::{Browsers, PortRange};

/// The verdict of every port for a browser-class rule, and the table it
/// came from (for the summary).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrowserPorts {
    /// The treatment of ports no list names.
    pub action: Action,
    /// The listed ports by treatment: deny, audit, allow.
    pub listed: [(Action, Vec<PortRange>); 3],
    /// Generation 0's `LW_BROWSER_PORTS` entries.
    pub words: Box<[u64; BROWSER_PORT_WORDS as usize]>,
}

/// The verdict a treatment gives in `mode`.
pub fn verdict_of(action: Action, mode: Mode) -> u8 {
    match (action, mode) {
        (Action::Deny, Mode::Enforce) => verdict::DENY,
        (Action::Deny, Mode::Audit) => verdict::WOULD_DENY,
        (Action::Audit, _) => verdict::AUDIT,
        (Action::Allow, _) => verdict::ALLOW,
    }
}

impl BrowserPorts {
    pub fn compile(browsers: &Browsers, mode: Mode) -> Self {
        // Two bits per port: the default's verdict repeated over each word.
        let fill = u64::from(verdict_of(browsers.action, mode)) * 0x5555_5555_5555_5555;
        let mut words = Box::new([fill; BROWSER_PORT_WORDS as usize]);
        let listed = browsers.lists().map(|(action, ranges)| {
            let v = u64::from(verdict_of(action, mode));
            for range in ranges {
                for port in range.value.first..=range.value.last {
                    let (index, shift) = browser_slot(0, port);
                    let word = &mut words[index as usize];
                    *word = *word & !(3 << shift) | v << shift;
                }
            }
            (action, ranges.iter().map(|r| r.value).collect())
        });
        Self {
            action: browsers.action,
            listed,
            words,
        }
    }

    /// The verdict a browser-class rule gets at `port`.
    pub fn verdict(&self, port: u16) -> u8 {
        let (index, shift) = browser_slot(0, port);
        browser_verdict(self.words[index as usize], shift)
    }
}
