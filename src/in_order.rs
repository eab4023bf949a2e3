//! [`InOrder`]: puts results that arrive in completion order back in input
//! order.

/// Collects one value per index, whatever order they arrive in.
pub(crate) struct InOrder<T>(Vec<Option<T>>);

impl<T> InOrder<T> {
    /// Room for `expected` values; more are accepted.
    pub(crate) fn new(expected: usize) -> Self {
        let mut slots = Vec::new();
        slots.resize_with(expected, || None);
        Self(slots)
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn place(&mut self, index: usize, value: T) {
        if index >= self.0.len() {
            self.0.resize_with(index + 1, || None);
        }
        self.0[index] = Some(value);
    }

    /// The values in index order, in the same allocation where the layouts
    /// allow (std collects `vec::IntoIter` + `map` in place).
    ///
    /// # Panics
    ///
    /// If an index below the highest one was never placed: the engine
    /// settles every input exactly once (the property tests hold it to
    /// that), so this is a bug in the crate, not in its input.
    pub(crate) fn finish(self) -> Vec<T> {
        self.0
            .into_iter()
            .map(|slot| slot.expect("fanout settles every input exactly once"))
            .collect()
    }
}
