//! [`InOrder`]: puts results that arrive in completion order back in input
//! order.

/// Collects one value per index, whatever order they arrive in.
pub(crate) struct InOrder<T>(Vec<Option<T>>);

impl<T> InOrder<T> {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self(Vec::with_capacity(capacity))
    }

    pub(crate) fn capacity(&self) -> usize {
        self.0.capacity()
    }

    pub(crate) fn place(&mut self, index: usize, value: T) {
        if index >= self.0.len() {
            self.0.resize_with(index + 1, || None);
        }
        self.0[index] = Some(value);
    }

    /// The values in index order.
    ///
    /// The engine settles every input exactly once (the property tests hold
    /// it to that), so every index below the highest one is filled.
    pub(crate) fn finish(self) -> Vec<T> {
        self.0.into_iter().flatten().collect()
    }
}
