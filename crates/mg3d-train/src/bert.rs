//! Hugging Face BERT in tch (being written).
