"""Credit lines built from what the image sources told us."""
from imgcls.credits import credit_line, license_name


def test_the_source_attribution_is_used_as_is():
    row = {"source": "openverse", "attribution": '"Roses" by Ann, licensed under CC BY 2.0.', "creator": "Ann"}
    assert credit_line(row) == '"Roses" by Ann, licensed under CC BY 2.0.'


def test_a_credit_is_built_when_the_source_gave_none():
    row = {"source": "wikimedia", "title": "Lavender field", "creator": "Bo", "license": "by-sa 4.0",
           "license_url": "https://creativecommons.org/licenses/by-sa/4.0/", "landing_url": "https://commons/x"}
    assert credit_line(row) == ('"Lavender field" by Bo, CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/),'
                                " from https://commons/x")
    assert credit_line(row, short=True) == "Bo, CC BY-SA 4.0"


def test_unknown_licences_say_so_and_own_uploads_need_no_credit():
    assert credit_line({"source": "ddg", "source_url": "https://x/y.jpg"}) == "Image, licence unknown, from https://x/y.jpg"
    assert credit_line({"source": "upload", "added_by": "ann"}) is None
    assert license_name("cc0 1.0") == "CC0 1.0" and license_name("mystery") == "mystery"
