//! A buffer each thread keeps between products (the panels' and the AMX tiles' packed
//! activations): a fresh one's page faults cost more than filling it (a third of the
//! panels' weaving).

use std::cell::RefCell;
use std::thread::LocalKey;

/// A thread's kept buffer.
pub type Slot<T> = LocalKey<RefCell<Vec<T>>>;

/// The buffer kept in `slot`, `len` long: its elements as they were left (defaults past what
/// it held), for a caller that writes every one.
pub fn take<T: Clone + Default>(slot: &'static Slot<T>, len: usize) -> Vec<T> {
    let mut v = slot.take();
    if v.len() < len {
        v.resize(len, T::default());
    }
    v.truncate(len);
    v
}

/// `v` kept in `slot` for this thread's next [`take`], where it holds more than the buffer
/// kept there.
pub fn keep<T>(slot: &'static Slot<T>, v: Vec<T>) {
    slot.with_borrow_mut(|spare| {
        if v.capacity() > spare.capacity() {
            *spare = v;
        }
    });
}
