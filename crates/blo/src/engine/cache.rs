//! Per-thread reuse of workspaces: a finished sweep hands its tapes and
//! buffers back, and the next sweep on the same thread takes them, so a warm
//! estimate allocates nothing but its result.

use std::any::Any;
use std::cell::RefCell;

thread_local! {
    /// Slots for values handed back by finished sweeps, reused by the next
    /// ones on this thread (any type: a slot is an `Option<T>`, looked up by
    /// type). A slot outlives its value, so taking a value and handing it back
    /// allocates nothing.
    static CACHE: RefCell<Vec<Box<dyn Slot>>> = const { RefCell::new(Vec::new()) };
}

/// At most this many slots are kept per thread.
const CACHE_LEN: usize = 4;

/// A value of type `T` from this thread's cache, or `T::default()`. Users
/// must overwrite whatever they read (results cannot depend on which one is
/// returned).
pub(crate) fn take<T: Default + 'static>() -> T {
    CACHE.with(|c| {
        c.borrow_mut()
            .iter_mut()
            .find_map(|slot| slot.as_any_mut().downcast_mut::<Option<T>>()?.take())
            .unwrap_or_default()
    })
}

/// Hands `value` back to this thread's cache: into an empty slot of its
/// type, a new slot, or an empty slot of another type (dropped if every slot
/// is full).
pub(crate) fn give_back<T: 'static>(value: T) {
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        let own = c
            .iter_mut()
            .filter_map(|slot| slot.as_any_mut().downcast_mut::<Option<T>>())
            .find(|o| o.is_none());
        if let Some(o) = own {
            *o = Some(value);
        } else if c.len() < CACHE_LEN {
            c.push(Box::new(Some(value)));
        } else if let Some(slot) = c.iter_mut().find(|slot| slot.is_empty()) {
            *slot = Box::new(Some(value));
        }
    })
}

/// A cache slot: an `Option<T>` for some `T`.
trait Slot {
    fn is_empty(&self) -> bool;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: 'static> Slot for Option<T> {
    fn is_empty(&self) -> bool {
        self.is_none()
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
