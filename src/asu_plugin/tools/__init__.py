"""Research tools around ASU: the tau-probe (:mod:`.probe`), the fluency measure of generated
answers (:mod:`.fluency`) and the offline model preparation (:mod:`.models`). They may use the
core and the OpenUnlearning part; neither of those imports them.
"""
