"""Title cleaning: each option, per-row stopwords, and the vectorized path against the reference."""
from __future__ import annotations

import pyarrow as pa
import pytest

from meli.data.readers import read_chunks
from meli.data.text import clean_array, clean_title_python, clean_titles, guess_language


def test_default_cleaning_lowercases_strips_accents_punctuation_and_stopwords():
    out = clean_titles(["Funda Para Celular Samsung S21 Ultra, Silicona ¡Original!", "Está la mejor Ñandú"])
    assert out == ["funda celular samsung s21 ultra silicona original", "mejor nandu"]


def test_options_switch_steps_off_and_on():
    title = ["Cámara Sony A7-III 24mm, Lente f/1.8 de la"]
    assert clean_titles(title, {"strip_accents": False}) == ["cámara sony a7 iii 24mm lente"]
    assert clean_titles(title, {"strip_numbers": True}) == ["camara sony iii mm lente"]
    assert clean_titles(title, {"lowercase": False}) == ["Camara Sony A7 III 24mm Lente"]
    assert clean_titles(title, {"remove_stopwords": False, "min_token_length": 1}) == [
        "camara sony a7 iii 24mm lente f 1 8 de la"
    ]
    assert clean_titles(title, {"strip_punctuation": False, "min_token_length": 1}) == [
        "camara sony a7-iii 24mm, lente f/1.8"
    ]
    assert clean_titles(title, {"min_token_length": 5}) == ["camara lente"]


def test_stopwords_follow_each_rows_language():
    titles = pa.array(["o kit do carro em oferta", "o kit do carro em oferta", "el kit del auto con envio"])
    languages = pa.array(["portuguese", "spanish", "spanish"])
    cleaned = clean_array(titles, {}, languages)
    assert cleaned.text.to_pylist() == ["kit carro oferta", "kit do carro em oferta", "kit auto envio"]
    assert cleaned.n_tokens.tolist() == [3, 5, 3]


def test_empty_and_missing_titles_become_empty_text():
    cleaned = clean_array(pa.array([None, "", "!!! ...", "de la para", "ok tv"]), {}, "spanish")
    assert cleaned.text.to_pylist() == ["", "", "", "", "ok tv"]
    assert cleaned.n_tokens.tolist() == [0, 0, 0, 0, 2]


@pytest.mark.parametrize("cfg", [{}, {"strip_numbers": True, "lowercase": False, "strip_accents": False}])
def test_vectorized_cleaning_equals_the_per_row_reference_on_real_titles(course_sample, raw_head, cfg):
    titles = [t for src in (course_sample, raw_head) for c in read_chunks(src) for t in c.table["title"].to_pylist()]
    assert len(titles) == 38_205 + 1_260
    titles = titles[::3]  # plenty of variety, a third of the time
    vectorized = clean_array(pa.array(titles), cfg, "spanish").text.to_pylist()
    reference = [clean_title_python(t, cfg, "spanish") for t in titles]
    assert vectorized == reference


def test_guess_language_on_clear_cases():
    guesses = guess_language(pa.array(["Kit Com 2 Peças Para o Carro", "Juego De Llaves Con Estuche", "Pneu Aro 15"]))
    assert guesses.to_pylist() == ["portuguese", "spanish", "spanish"]


def test_new_titles_are_cleaned_with_the_training_datas_language():
    """Predict cleans new titles with the stopwords of the language the model was trained on."""
    from meli.data.text import clean_titles, cleaning_for

    cfg = {"remove_stopwords": True}
    pt_summary = {"preprocess": cfg, "dataset": {"languages": ["portuguese"]}}
    preprocess, language = cleaning_for(pt_summary)
    assert (preprocess, language) == (cfg, "portuguese")
    # "com" and "para" are Portuguese stopwords; "com" is a plain word in Spanish
    [pt] = clean_titles(["Capa com película para celular"], preprocess, language)
    [es] = clean_titles(["Capa com película para celular"], preprocess, "spanish")
    assert "com" not in pt.split() and "com" in es.split()
    # a model trained on both languages: guessed per title
    both = {"preprocess": cfg, "dataset": {"languages": ["spanish", "portuguese"]}}
    assert cleaning_for(both)[1] is None
    guessed = clean_titles(["Capa com película do celular", "Funda con vidrio del celular"], cfg, None)
    assert "com" not in guessed[0].split() and "con" not in guessed[1].split()
    assert cleaning_for(None) == (None, "spanish")
