//! mpformer
